"""The ``whisper`` transcriber on a random tiny Whisper written with ``save_pretrained``.

Random weights transcribe nothing meaningful: these tests check that the real loading, feature,
generation and decoding path runs, is deterministic, respects its limits, and fails clearly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf

from csm_core.audio import Audio
from csm_core.config import Settings
from csm_core.errors import AudioError, ConfigError
from csm_core.plugins import Plugins
from csm_core.records import StageContext
from csm_core.registry import Registry
from csm_listen.model_sources import ModelNotFound, NotAModel
from csm_listen.tiny_models import byte_vocab, write_tiny_whisper
from csm_listen.transcriber import WhisperTranscriber

ESPEAK = shutil.which("espeak-ng")


FAST = {"whisper": {"max_new_tokens": 8}}  # tokens cost ~25 ms each on a shared 2-core CPU


def make(settings: Settings) -> WhisperTranscriber:
    """The stage on the pytorch backend, as a pipeline builds it."""
    registry = Registry.collect(Plugins.from_environment({"CSM_LOAD_PLUGINS": "pytorch"}))
    return WhisperTranscriber(StageContext("transcriber", settings, registry=registry, backend=registry.backend("pytorch")))


def tiny_settings(asr, **extra) -> Settings:
    return Settings(device="cpu", models={"asr": str(asr)}, options=extra.pop("options", FAST), **extra)


def noise(seconds: float, rate: int, seed: int = 0) -> Audio:
    return Audio((0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32), rate)


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory):
    return write_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper", seed=3)


@pytest.fixture(scope="session")
def transcriber(whisper_dir):
    return make(tiny_settings(whisper_dir))


def test_preset_writes_the_tiny_whisper_once_and_reuses_it(tmp_path):
    settings = Settings(device="cpu", models={"preset": "tiny"}, cache_dir=tmp_path, options=FAST)
    first = make(settings)
    weights = tmp_path / "presets" / "whisper-tiny" / "model.safetensors"
    assert first.model_dir == weights.parent and weights.is_file()
    stamp = weights.stat().st_mtime_ns
    second = make(settings)
    assert weights.stat().st_mtime_ns == stamp
    clip = noise(1.0, 16000)
    assert first.transcribe(clip) == second.transcribe(clip)


def test_transcribes_to_a_deterministic_string(transcriber, whisper_dir):
    clip = noise(2.0, 24000, seed=1)
    text = transcriber.transcribe(clip)
    assert isinstance(text, str)
    again = make(tiny_settings(whisper_dir))
    assert again.transcribe(clip) == text


def test_text_is_the_byte_decoding_of_the_generated_tokens(transcriber):
    clip = noise(1.5, 16000, seed=2)
    (ids,) = transcriber.token_ids(clip)
    assert len(ids) > 0
    special = set(transcriber.processor.tokenizer.all_special_ids)
    assert not special & set(ids.tolist())  # the forced prompt and end token are not part of the text
    by_id = {i: ch for ch, i in byte_vocab().items()}
    gpt2_to_byte = {ch: b for ch, b in byte_vocab().items()}
    expected = bytes(gpt2_to_byte[by_id[int(i)]] for i in ids).decode("utf-8", errors="replace").strip()
    assert transcriber.transcribe(clip) == expected


def test_max_new_tokens_bounds_the_output(whisper_dir):
    short = make(Settings(device="cpu", models={"asr": str(whisper_dir)}, options={"whisper": {"max_new_tokens": 4}}))
    (ids,) = short.token_ids(noise(1.0, 16000, seed=3))
    assert 0 < len(ids) <= 4


def test_eight_khz_input_is_resampled(transcriber):
    clip = noise(1.0, 8000, seed=4)
    (ids,) = transcriber.token_ids(clip)
    assert isinstance(transcriber.transcribe(clip), str) and len(ids) > 0


def test_audio_over_30_s_is_transcribed_window_by_window(whisper_dir):
    fast = make(Settings(device="cpu", models={"asr": str(whisper_dir)}, options={"whisper": {"max_new_tokens": 2}}))
    assert len(fast.token_ids(noise(31.0, 16000, seed=5))) == 2


@pytest.mark.parametrize(
    "bad, match",
    [
        (Audio(np.zeros(0, np.float32), 16000), "empty"),
        (Audio(np.array([0.0, np.nan], np.float32), 16000), "NaN"),
        (np.zeros(16000, np.float32), "takes a csm_core.audio.Audio, got ndarray"),
    ],
)
def test_bad_audio_is_rejected(transcriber, bad, match):
    with pytest.raises(AudioError, match=match):
        transcriber.transcribe(bad)


def test_model_from_a_fake_hugging_face_cache(whisper_dir, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--someorg--whisper-fake" / "snapshots" / "0123abcd"
    shutil.copytree(whisper_dir, snapshot)
    (tmp_path / "hub" / "models--someorg--whisper-fake" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--whisper-fake" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = make(tiny_settings("someorg/whisper-fake"))
    assert cached.model_dir == snapshot
    clip = noise(1.0, 16000, seed=6)
    assert cached.transcribe(clip) == make(tiny_settings(whisper_dir)).transcribe(clip)


def test_uncached_repo_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound) as info:
        make(Settings(device="cpu", models={"asr": "nobody/no-whisper"}))
    message = str(info.value)
    assert "models.asr" in message and str(tmp_path) in message
    assert "huggingface-cli download nobody/no-whisper" in message and "--preset tiny" in message
    assert len(info.value.looked_at) == 2


def test_no_model_configured_says_what_to_set():
    with pytest.raises(ModelNotFound, match="set models.asr.*--preset tiny"):
        make(Settings(device="cpu"))


def test_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAModel, match=r"config.json.*found: notes.txt"):
        make(Settings(device="cpu", models={"asr": str(tmp_path)}))


def test_a_model_directory_that_is_not_whisper(tmp_path, whisper_dir):
    broken = tmp_path / "broken"
    shutil.copytree(whisper_dir, broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(NotAModel, match="does not load as a Whisper model"):
        make(Settings(device="cpu", models={"asr": str(broken)}))


def test_unknown_option_is_a_config_error(whisper_dir):
    with pytest.raises(ConfigError, match=r"(?s)options.whisper.*max_tokens"):
        make(Settings(device="cpu", models={"asr": str(whisper_dir)}, options={"whisper": {"max_tokens": 3}}))


def test_transcribing_raises_no_deprecation_warning(transcriber):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        text = transcriber.transcribe(noise(1.0, 16000, seed=8))
    assert isinstance(text, str)


@pytest.mark.slow  # a fresh csmctl loads every plugin and the tiny models: ~10-20 s on 2 busy cores
def test_csmctl_chat_on_speech_prints_no_deprecation_warning(tmp_path):
    """``chat`` with a WAV runs Mimi's encoder, Whisper, the reply LM and CSM in a fresh interpreter with
    FutureWarning an error; transformers' once-per-process deprecation log lines are read from stderr."""
    sf.write(tmp_path / "in.wav", noise(1.0, 16000, seed=9).samples, 16000)
    environ = {**os.environ, "NO_COLOR": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-m", "csm_core.cli", "chat", str(tmp_path / "in.wav"),
         "--state", str(tmp_path / "chat.json"), "--preset", "tiny", "-m", "2", "--device", "cpu",
         "-o", str(tmp_path / "reply.wav")],
        capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "transcript:" in done.stdout and (tmp_path / "reply.wav").is_file()
    # FutureWarning is an error above; transformers' own log line for the old name reads
    # "`past_key_values`/`cache_params` are deprecated. Use `cache` instead."
    assert "FutureWarning" not in done.stderr and "past_key_values" not in done.stderr, done.stderr


@pytest.mark.espeak
@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_real_speech_runs_through_the_model(transcriber, tmp_path):
    path = tmp_path / "speech.wav"
    subprocess.run([ESPEAK, "-w", str(path), "Hello, how are you today?"], check=True, capture_output=True)
    pcm, rate = sf.read(path, dtype="float32")
    speech = Audio(pcm, int(rate))
    text = transcriber.transcribe(speech)
    # Random weights: the text is meaningless, but it is decoded bytes and the same every time.
    assert isinstance(text, str) and text == transcriber.transcribe(speech)
