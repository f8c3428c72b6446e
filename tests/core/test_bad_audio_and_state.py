"""Bad input at the edge, through real ``csmctl run`` and ``csmctl chat`` subprocesses (tiny preset).

Every refused case asserts: exit status 2, exactly one line on stderr (no blank line left by a progress
display), starting ``error:`` and naming what was wrong, no traceback, and every file that was in the
working folder before (the input, the state file, an earlier reply.wav, the config) unchanged byte for
byte, with no file added. Most are refused before any model loads; the codes that only the loaded codec
can judge are refused after the models load and before anything is generated. Ordinary files (stereo,
odd rates, FLAC) still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile

import bad_audio_files as bad
from audio_signals import tone

pytest.importorskip("torch")
pytest.importorskip("transformers")

TINY = ["--preset", "tiny", "-m", "3", "--temperature", "0", "--device", "cpu"]
CODES = [[1, 2]] * 32  # two frames of 32 codebooks: what the tiny preset's codec makes


def state(segments: list | None = None, **fields) -> dict:
    """A valid state file's payload (one earlier turn), with ``segments`` or top-level ``fields`` replaced."""
    payload = {
        "format": "csm-multi-conversation", "version": 2, "turns": 1, "voice": None,
        "segments": [{"speaker": 1, "text": "hi", "codes": None}, {"speaker": 0, "text": "hello", "codes": CODES}],
    }
    if segments is not None:
        payload["segments"] = segments
    return {**payload, **fields}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def csmctl(folder: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "NO_COLOR": "1", "XDG_CACHE_HOME": str(cache), "COLUMNS": "200"}
    environ.pop("CSM_LOAD_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "csm_core.cli", *args], cwd=folder, capture_output=True, text=True,
        env=environ, timeout=600,
    )


@pytest.fixture
def folder(tmp_path) -> Path:
    """The working folder: an earlier reply.wav and a valid chat.json are there before every command."""
    work = tmp_path / "work"
    work.mkdir()
    bad.wav(work / "reply.wav", 0.2, 24000)
    (work / "chat.json").write_text(json.dumps(state()))
    return work


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# Each case prepares the working folder and returns (the csmctl arguments, what the error must name).
Case = Callable[[Path], tuple[list[str], list[str]]]


def run_audio(make: Callable[[Path], Path], *needles: str) -> Case:
    def case(work: Path):
        path = make(work)
        return ["run", path.name, "-o", "reply.wav", *TINY], [path.name, *needles]

    return case


def chat_audio(make: Callable[[Path], Path], *needles: str) -> Case:
    def case(work: Path):
        path = make(work)
        return ["chat", path.name, "-s", "chat.json", "-o", "reply.wav", *TINY], [path.name, *needles]

    return case


def chat_state(payload, *needles: str) -> Case:
    def case(work: Path):
        text = payload if isinstance(payload, str) else json.dumps(payload)
        (work / "chat.json").write_text(text)
        return ["chat", "--text", "And now?", "-s", "chat.json", "-o", "reply.wav", *TINY], ["chat.json", *needles]

    return case


def chat_args(*args: str, needles: tuple[str, ...], setup: Callable[[Path], None] | None = None) -> Case:
    def case(work: Path):
        if setup is not None:
            setup(work)
        return ["chat", "--text", "And now?", *args, *TINY], list(needles)

    return case


def _nan_wav(work: Path) -> Path:
    samples = tone(220.0, 0.3, 16000)
    samples[50] = np.nan
    soundfile.write(str(work / "nan.wav"), samples, 16000, subtype="FLOAT")
    return work / "nan.wav"


def _text_wav(work: Path) -> Path:
    (work / "notes.wav").write_text("these are notes, not samples\n")
    return work / "notes.wav"


def _empty_file(work: Path) -> Path:
    (work / "empty.wav").write_bytes(b"")
    return work / "empty.wav"


def _voice_config(work: Path) -> None:
    bad.wav(work / "click.wav", 0.01, 16000)
    (work / "voice.toml").write_text('[voice]\naudio = "click.wav"\ntext = "Hi."\n')


def _truncated(name: str, rate: int = 24000) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        full = bad.wav(work.parent / f"full-{name}", 1.0, rate)
        return bad.truncated(work / name, full, keep=0.5)

    return make


REFUSED_EARLY: dict[str, Case] = {
    # the user's audio, `run`
    "run-truncated-wav": run_audio(_truncated("cut.wav"), "is truncated", "promises 48000 bytes of audio (1 s)"),
    "run-header-declares-10-minutes": run_audio(
        lambda w: bad.lying_header_wav(w / "liar.wav", 600, 0.5), "is truncated", "(600 s)"),
    "run-zero-frames": run_audio(
        lambda w: bad.wav(w / "zero.wav", 0.0, 16000), "is empty (0 samples)"),
    "run-zero-bytes": run_audio(_empty_file, "is empty (0 bytes)"),
    "run-text-named-wav": run_audio(_text_wav, "is not a readable audio file", "use WAV, FLAC or OGG"),
    "run-10ms-clip": run_audio(
        lambda w: bad.wav(w / "click.wav", 0.01, 24000), "is too short: 0.01 s", "the minimum is 0.08 s"),
    "run-10-minute-clip": run_audio(
        lambda w: bad.long_silent_wav(w / "long.wav", 600), "is too long: 600 s by its header", "the maximum is 120 s"),
    "run-truncated-flac": run_audio(_truncated("cut.flac"), "truncated"),
    "run-4-khz": run_audio(
        lambda w: bad.wav(w / "low.wav", 0.3, 4000), "sample rate of 4000 Hz", "between 8000 and 192000 Hz"),
    "run-10-channels": run_audio(
        lambda w: bad.wav(w / "many.wav", 0.3, 16000, channels=10), "has 10 channels", "at most 8"),
    "run-nan-samples": run_audio(_nan_wav, "1 NaN or infinite samples (first at index 50)"),
    "run-directory": run_audio(lambda w: (w / "takes").mkdir() or w / "takes", "is a directory"),
    "run-missing-file": run_audio(lambda w: w / "absent.wav", "does not exist"),
    # the user's audio, `chat`
    "chat-10ms-clip": chat_audio(lambda w: bad.wav(w / "click.wav", 0.01, 16000), "is too short", "0.08 s"),
    "chat-truncated-wav": chat_audio(_truncated("cut.wav", 16000), "is truncated"),
    "chat-10-minute-clip": chat_audio(lambda w: bad.long_silent_wav(w / "long.wav", 600, 8000), "the maximum is 120 s"),
    # the state file
    "state-not-json": chat_state('{"format": "csm-multi-conv', "is not valid JSON"),
    "state-foreign": chat_state({"something": "else"}, "is not a csm-multi conversation file"),
    "state-version-99": chat_state(state(version=99), "has version 99"),
    "state-unknown-field": chat_state(state(mood="fine"), "mood = 'fine': is not a field of this format"),
    "state-negative-turns": chat_state(state(turns=-2), "turns = -2: must be an integer >= 0"),
    "state-negative-speaker": chat_state(
        state([{"speaker": -1, "text": "hi", "codes": None}]), "segments[0].speaker = -1: must be an integer >= 0"),
    "state-null-text": chat_state(
        state([{"speaker": 1, "text": None, "codes": None}]), "segments[0].text = null: must be a string"),
    "state-negative-code": chat_state(
        state([{"speaker": 0, "text": "x", "codes": [[1, 2]] * 3 + [[1, -7]] + [[1, 2]] * 28}]),
        "segments[0].codes[3][1] = -7: must be an integer code >= 0"),
    "state-float-code": chat_state(
        state([{"speaker": 0, "text": "x", "codes": [[1, 2.5]] * 32}]), "segments[0].codes[0][1] = 2.5"),
    "state-ragged-codes": chat_state(
        state([{"speaker": 0, "text": "x", "codes": [[1, 2]] * 31 + [[1]]}]),
        "segments[0].codes[31] has 1 frames"),
    "state-codes-not-2d": chat_state(
        state([{"speaker": 0, "text": "x", "codes": [1, 2]}]), "segments[0].codes[0] = 1"),
    "state-codebooks-differ": chat_state(
        state([{"speaker": 0, "text": "x", "codes": CODES}, {"speaker": 0, "text": "y", "codes": [[1]] * 8}]),
        "segments[1].codes has 8 codebooks: segments[0].codes has 32"),
    "state-bad-voice-sha": chat_state(
        state(voice={"path": "v.wav", "sha256": "123", "text": "Hi.", "speaker": None}), "voice.sha256 = '123'"),
    "state-voice-null-text": chat_state(
        state(voice={"path": "v.wav", "sha256": "ab" * 32, "text": None, "speaker": None}), "voice.text = null"),
    "state-is-a-directory": chat_args(
        "-s", "states", "-o", "reply.wav", needles=("'states'", "it is a directory"),
        setup=lambda w: (w / "states").mkdir()),
    # where the reply and the state go
    "chat-output-is-a-directory": chat_args(
        "-s", "chat.json", "-o", "replies", needles=("'replies'",), setup=lambda w: (w / "replies").mkdir()),
    "chat-output-is-the-state": chat_args(
        "-s", "talk.wav", "-o", "talk.wav", needles=("'talk.wav'", "state"),
        setup=lambda w: (w / "talk.wav").write_text(json.dumps(state()))),
    "chat-output-folder-missing": chat_args(
        "-s", "chat.json", "-o", "no/reply.wav", needles=("'no/reply.wav'", "'no' does not exist")),
    "chat-state-folder-missing": chat_args(
        "-s", "no/chat.json", "-o", "reply.wav", needles=("'no/chat.json'", "directory 'no' does not exist")),
    # the [voice] reference clip
    "chat-voice-clip-10ms": chat_args(
        "-s", "chat.json", "-o", "reply.wav", "-c", "voice.toml", needles=("voice.audio 'click.wav'", "is too short"),
        setup=_voice_config),
    "say-voice-clip-10ms": lambda work: (_voice_config(work), (
        ["say", "Hello.", "-o", "out.wav", "-c", "voice.toml", *TINY], ["voice.audio 'click.wav'", "is too short"]))[1],
    "run-voice-clip-10ms": lambda work: (_voice_config(work), (
        ["run", "--text", "Hello.", "-o", "reply.wav", "-c", "voice.toml", *TINY],
        ["voice.audio 'click.wav'", "is too short"]))[1],
}

REFUSED_AFTER_LOADING: dict[str, Case] = {
    "state-code-beyond-the-codebook": chat_state(
        state([{"speaker": 0, "text": "x", "codes": [[5000, 1]] + [[1, 2]] * 31}]),
        "segments[0].codes[0][0] = 5000: a code must be below the codec's codebook size 2048"),
    "state-codebooks-not-the-models": chat_state(
        state([{"speaker": 0, "text": "x", "codes": [[1, 2]] * 4}]),
        "segments[0].codes has 4 codebooks, but this model's codec has 32"),
}


def assert_refused(result: subprocess.CompletedProcess, needles: list[str]) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()  # no blank line either (a progress display left behind)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result.stdout == ""


@pytest.mark.parametrize("name", list(REFUSED_EARLY))
def test_refused_before_any_model_loads(folder, tmp_path, name):
    args, needles = REFUSED_EARLY[name](folder)
    before = snapshot(folder)
    cache = tmp_path / "fresh-cache"  # loading the tiny LLM would write it here first
    result = csmctl(folder, cache, *args)
    assert_refused(result, needles)
    assert snapshot(folder) == before
    assert not cache.exists(), f"{sorted(cache.rglob('*'))}: the refusal came after a model loaded"


@pytest.mark.slow  # loads the tiny LLM and CSM (a few seconds), generates nothing
@pytest.mark.parametrize("name", list(REFUSED_AFTER_LOADING))
def test_codes_refused_once_the_codec_is_known(folder, cache, name):
    args, needles = REFUSED_AFTER_LOADING[name](folder)
    before = snapshot(folder)
    assert_refused(csmctl(folder, cache, *args), needles)
    assert snapshot(folder) == before


def test_the_battery_is_wide_enough():
    assert len(REFUSED_EARLY) + len(REFUSED_AFTER_LOADING) >= 20


@pytest.mark.slow  # a whole turn from audio: tokenizer, whisper, sentiment, LLM and CSM (tiny)
def test_stereo_44k_flac_still_works_with_run(folder, cache):
    bad.wav(folder / "stereo.flac", 0.5, 44100, channels=2)
    before = snapshot(folder)
    result = csmctl(folder, cache, "run", "stereo.flac", "-o", "reply.wav", *TINY)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr
    after = snapshot(folder)
    assert after["stereo.flac"] == before["stereo.flac"] and after["chat.json"] == before["chat.json"]
    assert after["reply.wav"] != before["reply.wav"] and soundfile.info(str(folder / "reply.wav")).samplerate == 24000


@pytest.mark.slow  # a whole chat turn from audio (tiny)
def test_an_11025_hz_8_bit_wav_still_works_with_chat(folder, cache):
    bad.wav(folder / "odd.wav", 0.4, 11025, subtype="PCM_U8")
    (folder / "chat.json").unlink()
    result = csmctl(folder, cache, "chat", "odd.wav", "-s", "chat.json", "-o", "reply.wav", *TINY)
    assert result.returncode == 0, result.stderr
    saved = json.loads((folder / "chat.json").read_text())
    assert saved["turns"] == 1 and len(saved["segments"]) == 2
    assert len(saved["segments"][0]["codes"]) == 32 and len(saved["segments"][0]["codes"][0]) == 5  # 0.4 s
    assert soundfile.info(str(folder / "reply.wav")).frames == 1920 * len(saved["segments"][1]["codes"][0])
