"""``csmctl train`` end to end, as real subprocesses, on espeak-ng speech and the ``tiny`` preset.

- fine-tuning: the training loss falls by at least half, the held-out loss falls, the run survives a
  kill -9 after a checkpoint and ``--resume`` continues from the saved step, and the result speaks
  through ``csmctl say -w DIR/final`` on the pytorch and the onnxruntime backends;
- bad manifest rows are listed with their line numbers and skipped (or stop ``--strict`` runs);
- two processes under ``torchrun`` (gloo) give the loss curve of one process with the same global batch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf

from conftest import csmctl, csmctl_env, manifest_rows, stereo_44k, write_jsonl

pytest.importorskip("torch")
pytest.importorskip("peft")

pytestmark = [pytest.mark.slow, pytest.mark.espeak]

TRAIN = ["--preset", "tiny", "--lora", "--lr", "1e-2", "--batch-size", "4", "-c", "quiet.toml"]


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_fine_tune_survives_a_kill_and_speaks_on_every_backend(speech, cache, tmp_path):
    write_jsonl(speech / "data.jsonl", manifest_rows())
    out = tmp_path / "run"
    args = ["train", "data.jsonl", "-o", str(out), "--steps", "40", "--eval-every", "10", "--save-every", "10", *TRAIN]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "csm_core.cli", *args], cwd=speech, stdout=log, stderr=log,
                                 env=csmctl_env(cache))
        deadline = time.monotonic() + 300
        while not list(out.glob("checkpoints/step-*/state.json")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "final").exists()
    saved = max(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoints/step-*/state.json"))
    assert saved < 40

    resumed = csmctl(speech, cache, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {saved})" in resumed.stderr and "resuming from" in resumed.stderr
    assert "data: 8 of 8 rows used (0 skipped), 0 clips encoded, 8 reused" in resumed.stdout

    records = metrics(out)
    steps = [r["step"] for r in records]
    assert steps == list(range(41))  # the baseline (0) and every step once: none lost, none repeated
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert losses[-1] <= 0.5 * losses[0], losses
    assert evals[-1] < evals[0], evals
    assert "loss:" in resumed.stdout and f"wrote {out / 'final'}" in resumed.stdout
    assert json.loads((out / "data_report.json").read_text())["skipped"] == []

    for backend in ("pytorch", "onnxruntime"):
        wav = tmp_path / f"{backend}.wav"
        said = csmctl(tmp_path, cache, "say", "Hello there.", "-w", str(out / "final"), "-b", backend,
                      "-o", str(wav), "-m", "12", "--seed", "1")
        assert said.returncode == 0, said.stderr[-3000:]
        info = sf.info(str(wav))
        assert info.samplerate == 24000 and info.frames > 0


@pytest.fixture(scope="module")
def mixed(speech, tmp_path_factory):
    """A manifest with good rows (one a 44.1 kHz stereo FLAC) and bad ones on lines 3, 5 and 7."""
    rows = manifest_rows()
    stereo_44k(speech / "turn3.wav", speech / "turn3-stereo.flac")
    rows[3] = {**rows[3], "audio": "turn3-stereo.flac"}
    lines = rows[:2] + [{"audio": "nowhere.wav", "text": "Lost."}] + rows[2:4] + ['{"audio": '] + rows[4:5] + [
        {"audio": "turn5.wav", "text": ""}] + rows[5:]
    return write_jsonl(speech / "mixed.jsonl", lines)


@pytest.fixture(scope="module")
def single(speech, cache, mixed, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    result = csmctl(speech, cache, "train", mixed.name, "-o", str(out), "--steps", "6", "--eval-every", "3", *TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_bad_rows_are_listed_with_their_lines_and_skipped(single):
    out, result = single
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 3
    assert skipped[0].startswith("skipped: mixed.jsonl line 3: audio file ") and skipped[0].endswith("nowhere.wav' does not exist")
    assert skipped[1:] == [
        "skipped: mixed.jsonl line 6: not valid JSON (Expecting value at column 11)",
        "skipped: mixed.jsonl line 8: empty text (field 'text'): every clip needs its transcript",
    ]
    assert "data: 8 of 11 rows used (3 skipped)" in result.stdout
    report = json.loads((out / "data_report.json").read_text())
    assert [s["where"] for s in report["skipped"]] == ["mixed.jsonl line 3", "mixed.jsonl line 6", "mixed.jsonl line 8"]
    assert report["used"] == 8


def test_strict_stops_at_the_first_bad_row(speech, cache, mixed, tmp_path):
    result = csmctl(speech, cache, "train", mixed.name, "-o", str(tmp_path / "run"), "--steps", "2", "--strict", *TRAIN)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: mixed.jsonl line 3: audio file ")
    assert not (tmp_path / "run" / "final").exists()


def test_two_processes_follow_the_single_process_loss_curve(speech, cache, single, tmp_path):
    """Same global batch (4), split 2 + 2 over two gloo processes. The step's gradient is normalized by
    the step's global code counts, so the two runs compute the same mathematical quantity; what differs
    is float32 summation order (all-reduced halves instead of one sum, per-process padding), about 1e-7
    relative per operation. Observed differences are below 1e-6 after 6 AdamW steps; 1e-4 leaves room
    for other CPUs' kernels, while any real difference (a wrong normalization or data shard) moves the
    loss by 1e-2 or more."""
    single_out, _ = single
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "csm_core.cli",
         "train", "mixed.jsonl", "-o", str(out), "--steps", "6", "--eval-every", "3", *TRAIN],
        cwd=speech, capture_output=True, text=True, env=csmctl_env(cache), timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = metrics(single_out), metrics(out)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2, 3, 4, 5, 6]
    for a, b in zip(one, two):
        for key in ("loss", "backbone_loss", "decoder_loss", "eval_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    assert one[-1]["loss"] < one[1]["loss"]
    assert (out / "final" / "model.safetensors").is_file()


def test_bad_input_is_refused_before_any_model_loads(speech, cache, mixed, tmp_path):
    def refused(*args: str) -> str:
        result = csmctl(speech, cache, "train", *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    out = str(tmp_path / "run")
    assert "amortization" in refused(mixed.name, "-o", out, "--preset", "tiny", "--amortization", "0")
    assert "nope.jsonl" in refused("nope.jsonl", "-o", out, "--preset", "tiny")
    assert "no checkpoint to resume" in refused(mixed.name, "-o", out, "--preset", "tiny", "--resume")
    (tmp_path / "run" / "checkpoints" / "step-00000004").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000004" / "state.json").write_text("{}")
    assert "already holds a training run" in refused(mixed.name, "-o", out, "--preset", "tiny")
    assert "lora_targets" in refused(mixed.name, "-o", str(tmp_path / "x"), "--preset", "tiny", "-c",
                                     _config(tmp_path, "[options.train]\nlora_targets = ['qkv']\n"))


def _config(folder, text: str) -> str:
    path = folder / "bad.toml"
    path.write_text(text)
    return str(path)
