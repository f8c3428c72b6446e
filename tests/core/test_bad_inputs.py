"""A battery of bad input through real ``csmctl`` subprocesses, as a careless or hostile user types it.

Every case runs in its own fresh working folder that holds what a user has: an earlier
``out.wav`` and ``reply.wav``, a chat state ``chat.json``, a config ``csm.toml``, a cache folder with an
artifact in it (``CSM_CACHE_DIR=cache``), an earlier benchmark report in ``bench/``, a speech clip. Each
case asserts: the exit status (2 unless stated), exactly one ``error:`` line on stderr naming what was
wrong, no traceback, and every file and folder of the working folder unchanged byte for byte, with
none added. Cases marked ``early`` must also be refused before torch is imported (``-X importtime``
shows what was imported), which is what keeps the battery fast; the few that only a loaded model can
judge (a top-k beyond its vocabulary, a device it cannot use) are refused before anything is written.
The cases run two at a time. Audio-file and chat-state contents are covered by
``test_bad_audio_and_state.py``.

Below the battery: Ctrl-C (exit 130, one ``interrupted:`` line, outputs as they were, or the audio
streamed so far), a write that fails half-way through a stream (the old file comes back), and the
control case (a command that succeeds does replace its output).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("torch")

CLI = [sys.executable, "-X", "importtime", "-m", "csm_core.cli"]
TINY = ["--preset", "tiny", "-m", "2", "--device", "cpu"]
IS_ROOT = os.geteuid() == 0


def _unwritable_folder() -> str | None:
    """A folder this process cannot create files in: /sys for root (permission bits do not stop root),
    else None (a read-only folder is made in each working folder instead)."""
    if not IS_ROOT:
        return None
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            return None
    except OSError:
        return "/sys"


UNWRITABLE = _unwritable_folder() or "locked"  # relative: the working folder's read-only "locked"


def make_template(folder: Path) -> Path:
    """The working folder every case starts from."""
    folder.mkdir()
    rate = 24_000
    t = np.arange(rate // 2) / rate
    soundfile.write(str(folder / "out.wav"), 0.3 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
    soundfile.write(str(folder / "reply.wav"), 0.3 * np.sin(2 * np.pi * 330 * t), rate, subtype="PCM_16")
    soundfile.write(str(folder / "speech.wav"), 0.3 * np.sin(2 * np.pi * 150 * t), 16_000, subtype="PCM_16")
    (folder / "chat.json").write_text(json.dumps(
        {"format": "csm-multi-conversation", "version": 2, "turns": 1, "voice": None,
         "segments": [{"speaker": 1, "text": "hi", "codes": None}, {"speaker": 0, "text": "hello", "codes": None}]}))
    (folder / "csm.toml").write_text("[generation]\ntemperature = 0.5\n")
    (folder / "cache" / "onnx").mkdir(parents=True)
    (folder / "cache" / "onnx" / "graph.onnx").write_bytes(os.urandom(256))
    (folder / "bench").mkdir()
    for name in ("bench.json", "bench.md", "bench.png"):
        (folder / "bench" / name).write_bytes(f"an earlier {name}".encode())
    (folder / "afile").write_text("not a folder, not TOML\n")
    (folder / "adir").mkdir()
    (folder / "adir.wav").mkdir()
    (folder / "latin.toml").write_bytes('# caf\xe9\nbackend = "pytorch"\n'.encode("latin-1"))
    (folder / "big.toml").write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    (folder / "typo.toml").write_text("[generation]\ntemprature = 0.5\n")
    (folder / "badtype.toml").write_text("generation = 5\n")
    (folder / "nan.toml").write_text("[generation]\ntemperature = nan\n")
    (folder / "emptypreset.toml").write_text('[models]\npreset = ""\n')
    (folder / "voice.toml").write_text('[voice]\naudio = "speech.wav"\ntext = "Hello there."\n')
    os.mkfifo(folder / "pipe.wav")
    if UNWRITABLE == "locked":
        (folder / "locked").mkdir()
        os.chmod(folder / "locked", 0o555)
    return folder


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` by relative path: a file's bytes, or the kind of a non-file."""
    entries: dict[str, object] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            key = str(path.relative_to(folder))
            if stat.S_ISREG(mode):
                entries[key] = path.read_bytes()
            else:
                entries[key] = "dir" if stat.S_ISDIR(mode) else "fifo" if stat.S_ISFIFO(mode) else oct(mode)
    return entries


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CSM_")}
    environ.update({"NO_COLOR": "1", "COLUMNS": "200", "CSM_CACHE_DIR": "cache", **(extra or {})})
    return environ


@dataclass(frozen=True)
class Case:
    """``args`` to csmctl (str, or bytes for what is not UTF-8), extra ``env``, the ``needles`` the error
    line must hold, the exit ``status``, whether it must be refused ``early`` (torch never imported), and
    ``also``: text expected elsewhere on stderr (a log line)."""

    args: tuple
    needles: tuple[str, ...]
    env: dict = field(default_factory=dict)
    status: int = 2
    early: bool = True
    also: tuple[str, ...] = ()


def case(*args, needles, env=None, status=2, early=True, also=()) -> Case:
    return Case(tuple(args), tuple(needles), env or {}, status, early, tuple(also))


CASES: dict[str, Case] = {
    # -- output paths: checked before any model loads, for every command that writes audio ---------------
    "say-output-folder-missing": case("say", "hi", "-o", "nofolder/out.wav", *TINY,
                                      needles=("--output 'nofolder/out.wav'", "'nofolder' does not exist", "mkdir")),
    "say-output-is-a-folder": case("say", "hi", "-o", "adir", *TINY, needles=("--output 'adir' is a folder",)),
    "say-output-folder-named-wav": case("say", "hi", "-o", "adir.wav", *TINY,
                                        needles=("--output 'adir.wav' is a folder", "adir.wav/reply.wav")),
    "say-output-trailing-slash": case("say", "hi", "-o", "newdir/", *TINY, needles=("--output 'newdir/' is a folder",)),
    "say-output-empty": case("say", "hi", "-o", "", *TINY, needles=("--output is empty", ".wav")),
    "say-output-unwritable": case("say", "hi", "-o", f"{UNWRITABLE}/x.wav", *TINY,
                                  needles=("--output", "cannot create files in folder", "make it writable")),
    "say-output-mp3": case("say", "hi", "-o", "out.mp3", *TINY,
                           needles=("'out.mp3' ends in '.mp3'", "WAV", "'out.wav'")),
    "say-output-flac": case("say", "hi", "-o", "out.flac", *TINY, needles=("'out.flac' ends in '.flac'", "WAV")),
    "say-output-no-extension": case("say", "hi", "-o", "out", *TINY, needles=("'out' has no extension",)),
    "say-output-txt": case("say", "hi", "-o", "notes.txt", *TINY, needles=("'notes.txt' ends in '.txt'",)),
    "say-output-only-extension": case("say", "hi", "-o", ".wav", *TINY, needles=("'.wav' is only an extension",)),
    "say-output-under-a-file": case("say", "hi", "-o", "afile/x.wav", *TINY,
                                    needles=("--output 'afile/x.wav'", "'afile' is a file, not a folder")),
    "say-output-name-too-long": case("say", "hi", "-o", "x" * 300 + ".wav", *TINY,
                                     needles=("longer than the 255 bytes file systems allow",)),
    "say-output-is-a-pipe": case("say", "hi", "-o", "pipe.wav", *TINY, needles=("'pipe.wav' is not a regular file",)),
    "say-stream-output-mp3": case("say", "hi", "--stream", "-o", "out.mp3", *TINY,
                                  needles=("'out.mp3' ends in '.mp3'",)),
    "say-output-is-the-voice-clip": case("say", "hi", "-c", "voice.toml", "-o", "speech.wav", *TINY,
                                         needles=("--output 'speech.wav' is also voice.audio",)),
    "run-output-is-the-input": case("run", "speech.wav", "-o", "speech.wav", *TINY,
                                    needles=("--output 'speech.wav' is also INPUT", "choose another output name")),
    "run-output-folder-missing": case("run", "--text", "hi", "-o", "nofolder/r.wav", *TINY,
                                      needles=("'nofolder' does not exist",)),
    "run-output-mp3": case("run", "--text", "hi", "-o", "reply.mp3", *TINY, needles=("'reply.mp3' ends in '.mp3'",)),
    "chat-output-is-the-state": case("chat", "--text", "hi", "--state", "talk.wav", "-o", "talk.wav", *TINY,
                                     needles=("--output 'talk.wav' is also --state",)),
    "chat-output-empty": case("chat", "--text", "hi", "-o", "", *TINY, needles=("--output is empty",)),
    "chat-state-folder-unwritable": case("chat", "--text", "hi", "--state", f"{UNWRITABLE}/c.json", *TINY,
                                         needles=("--state", "cannot create files in folder")),
    # -- the config file ------------------------------------------------------------------------------
    "config-not-utf8": case("say", "hi", "-c", "latin.toml", *TINY,
                            needles=("config file 'latin.toml' is not UTF-8", "0xe9", "save it as UTF-8")),
    "config-is-a-folder": case("say", "hi", "-c", "adir", *TINY, needles=("config file 'adir' is a folder",)),
    "config-missing": case("say", "hi", "-c", "nope.toml", *TINY, needles=("config file 'nope.toml' does not exist",)),
    "config-not-toml": case("say", "hi", "-c", "afile", *TINY, needles=("config file 'afile' is not valid TOML",)),
    "config-a-device": case("say", "hi", "-c", os.devnull, *TINY, needles=("'/dev/null' is not a regular file",)),
    "config-too-big": case("say", "hi", "-c", "big.toml", *TINY,
                           needles=("'big.toml' is 1048579 bytes", "at most 1048576")),
    "config-unknown-key": case("say", "hi", "-c", "typo.toml", *TINY,
                               needles=("generation.temprature: unknown setting", "typo.toml")),
    "config-table-as-value": case("say", "hi", "-c", "badtype.toml", *TINY,
                                  needles=("file badtype.toml", "generation: must be a table of settings (got 5)")),
    "config-nan": case("say", "hi", "-c", "nan.toml", *TINY,
                       needles=("generation.temperature: must be a finite number",)),
    "config-empty-string": case("say", "hi", "-c", "emptypreset.toml", "-m", "2",
                                needles=("models.preset: is empty", "leave the setting out")),
    # -- CSM_* environment variables ------------------------------------------------------------------
    "env-misspelt-setting": case("say", "hi", *TINY, env={"CSM_BACKNED": "onnxruntime"},
                                 needles=("CSM_BACKNED names no setting", "did you mean CSM_BACKEND")),
    "env-one-underscore": case("say", "hi", *TINY, env={"CSM_GENERATION_TOP_K": "5"},
                               needles=("did you mean CSM_GENERATION__TOP_K",)),
    "env-bad-value": case("say", "hi", *TINY, env={"CSM_GENERATION__TOP_K": "0"},
                          needles=("environment", "generation.top_k: Input should be greater than or equal to 1")),
    "env-table-and-key": case("say", "hi", *TINY, env={"CSM_GENERATION": "{}", "CSM_GENERATION__TOP_K": "3"},
                              needles=("CSM_GENERATION and CSM_GENERATION__TOP_K both set 'generation'",)),
    "env-unrelated-is-ignored": case("say", "hi", "-v", "-o", "out.mp3", *TINY, env={"CSM_HOME": "/opt/elsewhere"},
                                     needles=("'out.mp3' ends in '.mp3'",),
                                     also=("ignoring environment variable CSM_HOME: it names no setting",)),
    "env-seed-beyond-64-bits": case("say", "hi", *TINY, env={"CSM_GENERATION__SEED": str(2**64)},
                                    needles=("generation.seed", "less than or equal to 18446744073709551615")),
    "env-cache-is-a-file": case("say", "hi", *TINY, env={"CSM_CACHE_DIR": "afile"},
                                needles=("cache_dir 'afile' is a file, not a folder",)),
    "env-cache-unwritable": case("say", "hi", *TINY, env={"CSM_CACHE_DIR": f"{UNWRITABLE}/cache"},
                                 needles=("cache_dir", "cannot create files in folder")),
    # -- flags ----------------------------------------------------------------------------------------
    "seed-65-bits": case("say", "hi", "--seed", str(2**64), *TINY,
                         needles=("generation.seed", "less than or equal to 18446744073709551615",
                                  "got 18446744073709551616")),
    "seed-huge": case("say", "hi", "--seed", "9" * 30, *TINY, needles=("generation.seed",)),
    "seed-negative": case("say", "hi", "--seed", "-1", *TINY,
                          needles=("generation.seed", "greater than or equal to 0")),
    "seed-not-a-number": case("say", "hi", "--seed", "abc", *TINY,
                              needles=("'--seed'", "valid integer", "say --help`")),
    "temperature-nan": case("say", "hi", "-t", "nan", *TINY,
                            needles=("generation.temperature: must be a finite number",)),
    "temperature-inf": case("say", "hi", "-t", "inf", *TINY,
                            needles=("generation.temperature: must be a finite number",)),
    "temperature-negative": case("say", "hi", "-t", "-1", *TINY,
                                 needles=("generation.temperature", "greater than or equal to 0")),
    "top-p-zero": case("say", "hi", "-p", "0", *TINY, needles=("generation.top_p", "greater than 0")),
    "top-p-above-one": case("say", "hi", "-p", "1.5", *TINY, needles=("generation.top_p", "less than or equal to 1")),
    "top-k-zero": case("say", "hi", "-k", "0", *TINY, needles=("generation.top_k", "greater than or equal to 1")),
    "max-new-tokens-zero": case("say", "hi", "--preset", "tiny", "-m", "0", needles=("generation.max_new_frames",)),
    "max-new-tokens-huge": case("say", "hi", "--preset", "tiny", "-m", "100000",
                                needles=("generation.max_new_frames", "less than or equal to 2048")),
    "max-new-tokens-fraction": case("say", "hi", "--preset", "tiny", "-m", "1.5", needles=("'--max-new-tokens'",)),
    "speaker-negative": case("say", "hi", "--speaker", "-1", *TINY, needles=("speaker", "greater than or equal to 0")),
    "speaker-beyond-the-ids": case("say", "hi", "--speaker", "100000", *TINY,
                                   needles=("speaker", "less than or equal to 1023", "got 100000")),
    "device-unknown": case("say", "hi", "--preset", "tiny", "--device", "tpu",
                           needles=("device: must be auto, cpu, cuda or cuda:N",)),
    "device-empty": case("say", "hi", "--preset", "tiny", "--device", "", needles=("device: is empty",)),
    "optimizer-twice": case("say", "hi", "-O", "cache-clearing", "-O", "cache-clearing", *TINY,
                            needles=("'cache-clearing' is listed more than once",)),
    "preset-empty": case("say", "hi", "--preset", "", needles=("models.preset: is empty",)),
    "model-flavor-with-preset": case("say", "hi", "-f", "sesame", *TINY,
                                     needles=("models.model_flavor (--model-flavor)", "models.preset (--preset)",
                                              "drop one")),
    "preset-with-model-path": case("say", "hi", "-w", "adir", *TINY,
                                   needles=("models.preset and models.model_path are both set",)),
    "unknown-flag": case("say", "hi", "--frobnicate", needles=("No such option: --frobnicate",)),
    "missing-argument": case("say", needles=("Missing argument", "say --help`")),
    "unknown-command": case("speak", "hi", needles=("No such command 'speak'",)),
    "plugins-unknown-flag": case("plugins", "--frob", needles=("No such option: --frob", "plugins --help`")),
    # -- the text -------------------------------------------------------------------------------------
    "say-empty-text": case("say", "", *TINY, needles=("TEXT (the text to say) is empty",)),
    "say-blank-text": case("say", "   \n\t", *TINY, needles=("TEXT (the text to say) is empty",)),
    "run-empty-text": case("run", "--text", "", *TINY, needles=("--text is empty",)),
    "chat-empty-text": case("chat", "--text", " ", *TINY, needles=("--text is empty",)),
    "say-control-character": case("say", "a\x01b", *TINY, needles=("control character U+0001 at character 1",)),
    "say-not-utf8": case("say", b"caf\xe9", *TINY, needles=("is not valid UTF-8", "character 3")),
    "say-text-too-long": case("say", "word " * 1000, *TINY, needles=("is 5000 characters long", "at most 4096")),
    "run-input-and-text": case("run", "speech.wav", "--text", "hi", *TINY, needles=("one of the two",)),
    "run-neither-input-nor-text": case("run", *TINY, needles=("one of the two",)),
    # -- export and bench -----------------------------------------------------------------------------
    "export-cache-is-a-file": case("export", "--preset", "tiny", env={"CSM_CACHE_DIR": "afile"},
                                   needles=("cache_dir 'afile' is a file",)),
    "export-cache-unwritable": case("export", "--preset", "tiny", env={"CSM_CACHE_DIR": f"{UNWRITABLE}/c"},
                                    needles=("cache_dir", "cannot create files in folder")),
    "export-flavor-with-preset": case("export", "--preset", "tiny", "-f", "sesame", needles=("models.model_flavor",)),
    "bench-out-is-a-file": case("bench", "--out", "afile", "--presets", "tiny",
                                needles=("--out 'afile' is a file, not a folder",)),
    "bench-out-unwritable": case("bench", "--out", f"{UNWRITABLE}/b", "--presets", "tiny",
                                 needles=("--out", "cannot create files in folder")),
    "bench-out-under-a-file": case("bench", "--out", "afile/b", "--presets", "tiny",
                                   needles=("'afile/b' cannot be created", "'afile' is a file")),
    "bench-out-empty": case("bench", "--out", "", "--presets", "tiny", needles=("--out is empty",)),
    "bench-frames-zero": case("bench", "--frames", "0", "--out", "bench", needles=("--frames=0",)),
    "bench-text-empty": case("bench", "--text", " ", "--out", "bench", needles=("--text is empty",)),
    "bench-preset-unknown": case("bench", "--presets", "huge", "--out", "bench", early=False,  # the presets need torch
                                 needles=("unknown preset 'huge'",)),
    "bench-optimizer-set": case("bench", "--optimizers", "none+cache-clearing", "--out", "bench",
                                needles=("combines 'none' with optimizers",)),
    "bench-config-not-utf8": case("bench", "-c", "latin.toml", "--out", "bench", needles=("is not UTF-8",)),
    # -- only a loaded model can judge these; still refused before anything is written -----------------
    "top-k-beyond-the-vocabulary": case("say", "hi", "-k", "5000", *TINY, early=False,
                                        needles=("top-k 5000 is larger than the model's audio vocabulary of 2051 codes",
                                                 "--top-k", "at most 2051")),
    "device-cuda-without-a-gpu": case("say", "hi", "--preset", "tiny", "-m", "2", "--device", "cuda:7", early=False,
                                      needles=("device 'cuda:7' is not usable",)),
}


@dataclass
class Outcome:
    status: int
    stderr: str
    imported: set[str]
    before: dict
    after: dict


def _run(root: Path, name: str, spec: Case) -> Outcome:
    work = make_template(root / name)
    before = snapshot(work)
    done = subprocess.run([*CLI, *spec.args], cwd=work, capture_output=True, env=environment(spec.env), timeout=300)
    after = snapshot(work)
    stderr = done.stderr.decode("utf-8", "replace")
    lines = stderr.splitlines()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    text = "\n".join(line for line in lines if not line.startswith("import time:"))
    return Outcome(done.returncode, text + done.stdout.decode("utf-8", "replace"), imported, before, after)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """The outcome of every case this session runs (all, or those ``-k`` selects), two at a time (the
    machine has two cores)."""
    wanted = [item.callspec.params["name"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_bad_input_is_refused_cleanly"]
    root = tmp_path_factory.mktemp("bad-inputs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, root, name, CASES[name]) for name in dict.fromkeys(wanted)}
        return {name: future.result() for name, future in futures.items()}


def test_the_battery_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_cleanly(outcomes, name):
    spec, outcome = CASES[name], outcomes[name]
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.status == spec.status, outcome.stderr
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, outcome.stderr
    for needle in spec.needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    for text in spec.also:
        assert text in outcome.stderr
    assert outcome.after == outcome.before, "a refused command changed or added files"
    if spec.early:
        assert "torch" not in outcome.imported, "refused only after torch was imported"


# -- beyond the table -----------------------------------------------------------------------------------

@pytest.fixture
def work(tmp_path):
    return make_template(tmp_path / "work")


def _wait_for(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """Poll ``ready()`` until it holds (or fail the test with what the process said)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"the command ended or hung before it was ready: {err.decode()[-2000:]}")
        time.sleep(0.05)


def _default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it, even when the tests run as a background job (which
    starts with SIGINT ignored, and Python keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(work: Path, args: list[str], ready) -> tuple[int, str]:
    process = subprocess.Popen([sys.executable, "-m", "csm_core.cli", *args], cwd=work, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    _wait_for(process, lambda: ready(process))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    return process.returncode, err.decode()


def _interrupted_lines(stderr: str) -> list[str]:
    """The ``interrupted:`` lines (libraries may warn on stderr while they load)."""
    return [line for line in stderr.splitlines() if line.startswith("interrupted:") or line.startswith("error:")]


def _torch_loaded(process: subprocess.Popen) -> bool:
    """Whether the process has mapped libtorch: it is then inside the command, loading the model."""
    try:
        return "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the model loading")
def test_ctrl_c_keeps_the_earlier_output_and_says_so(work):
    before = snapshot(work)
    status, stderr = _interrupt(work, ["say", "Hello there, how are you today?", "--preset", "tiny", "-m", "400",
                                       "-o", "out.wav"], _torch_loaded)
    assert status == 130 and "Traceback" not in stderr
    assert _interrupted_lines(stderr) == ["interrupted: nothing written (out.wav left as it was)"]
    assert snapshot(work) == before


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the model loading")
def test_ctrl_c_during_a_chat_turn_changes_neither_file(work):
    before = snapshot(work)
    status, stderr = _interrupt(work, ["chat", "--text", "Tell me a long story.", "--preset", "tiny", "-m", "400",
                                       "-o", "reply.wav", "--state", "chat.json"], _torch_loaded)
    assert status == 130 and "Traceback" not in stderr
    assert _interrupted_lines(stderr) == ["interrupted: nothing written (reply.wav and chat.json left as they were)"]
    assert snapshot(work) == before


def test_ctrl_c_while_streaming_keeps_what_was_streamed(work):
    old = (work / "out.wav").read_bytes()
    def grown(process) -> bool:  # a new file, with audio after its header
        data = (work / "out.wav").read_bytes()
        return data[:64] != old[:64] and len(data) > 2 * 3840
    status, stderr = _interrupt(work, ["say", "Hello there, how are you today?", "--preset", "tiny", "-m", "400",
                                       "--stream", "-o", "out.wav"], grown)
    assert status == 130 and "Traceback" not in stderr
    lines = _interrupted_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("interrupted: kept ")
    assert "s of audio streamed to out.wav" in lines[0]
    seconds = float(lines[0].split()[2])
    info = soundfile.info(str(work / "out.wav"))  # a whole WAV: its header was updated after every chunk
    assert seconds > 0 and info.samplerate == 24_000 and info.frames >= round(seconds * 24_000) - 1
    assert not [name for name in os.listdir(work) if name.startswith(".")]  # no temporary left behind


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole-file"])
def test_a_write_that_fails_half_way_puts_the_old_file_back(work, stream):
    """A disk that fills up while the reply is written: error, status 2, the earlier out.wav as it was."""
    small = work / "out.wav"
    soundfile.write(str(small), np.zeros(240, dtype=np.float32), 24_000, subtype="PCM_16")  # 0.01 s: under the limit
    before = snapshot(work)
    done = subprocess.run(
        [sys.executable, "-m", "csm_core.cli", "say", "Hello there, how are you today?", "--preset", "tiny",
         "-m", "12", "-o", "out.wav", *(["--stream"] if stream else [])],
        cwd=work, env=environment(), capture_output=True, text=True, timeout=300,
        preexec_fn=_limit_file_size(12_000),  # about three 80 ms frames of 16-bit audio at 24 kHz
    )
    assert "Traceback" not in done.stderr
    if done.returncode == 0:  # the model ended its speech within the limit: nothing to test on this seed
        pytest.skip("the reply was shorter than the file-size limit")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "out.wav" in errors[0]
    assert snapshot(work) == before


def test_a_command_that_succeeds_replaces_its_output(work):
    """The control case: the snapshots above would see a change."""
    before = snapshot(work)
    done = subprocess.run([sys.executable, "-m", "csm_core.cli", "say", "hi", *TINY, "--seed", str(2**64 - 1),
                           "-o", "out.wav"], cwd=work, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = snapshot(work)
    assert after["out.wav"] != before["out.wav"] and soundfile.info(str(work / "out.wav")).samplerate == 24_000
    assert {key: value for key, value in after.items() if key != "out.wav"} == {
        key: value for key, value in before.items() if key != "out.wav"}
