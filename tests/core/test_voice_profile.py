"""Voice profiles: encoded once with the real tiny-preset Mimi tokenizer, cached on disk, rebuilt when bad."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from audio_signals import tone
from csm_core import hookimpl
from csm_core.audio import read_audio
from csm_core.config import Settings, load_settings
from csm_core.errors import ConfigError, CsmError
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins
from csm_core.voice_profile import encode_profile, entry_path, profile_key, profile_segment, tokenizer_encoder

pytest.importorskip("torch")


class CountingTokenizer:
    """A ``run_stage`` wrapper counting how often the tokenizer stage really runs."""

    def __init__(self):
        self.calls = 0

    @hookimpl(wrapper=True)
    def run_stage(self, stage, call, turn):
        if stage == "tokenizer":
            self.calls += 1
        return (yield)


def make_settings(cache, audio=None, text="A reference clip.", **extra) -> Settings:
    voice = {} if audio is None else {"audio": str(audio), "text": text}
    return Settings(device="cpu", models={"preset": "tiny"}, cache_dir=cache, voice=voice, **extra)


@pytest.fixture(scope="module")
def tiny_pipeline():
    """One tiny-preset pipeline (its Mimi tokenizer) for the module, with a tokenizer-call counter.

    The profile cache is on disk and keyed by settings, not by pipeline: a second pipeline would read
    the same entries (see test_second_pipeline_reads_the_cache)."""
    counter = CountingTokenizer()
    plugins = Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch"})
    plugins.register(counter, name="counting-tokenizer")
    with Pipeline(Settings(device="cpu", models={"preset": "tiny"}), plugins) as pipeline:
        yield pipeline, counter


@pytest.fixture
def run_profile(tiny_pipeline):
    pipeline, counter = tiny_pipeline

    def run(settings: Settings, events: list | None = None):
        """(the profile, tokenizer calls it took, the tokenizer's codes for the clip)."""
        before = counter.calls
        report = None if events is None else events.append
        profile = encode_profile(settings.voice, settings, tokenizer_encoder(pipeline), report=report)
        calls = counter.calls - before
        direct = pipeline.stage("tokenizer").encode(read_audio(settings.voice.audio))
        return profile, calls, direct

    return run


@pytest.fixture
def clip(write_wav):
    return write_wav("voice.wav", tone(220.0, 0.5, 16000), 16000)


@pytest.mark.slow  # builds the tiny Mimi once per module (~15 s on 2 busy cores)
def test_first_call_encodes_and_caches_second_reads_without_encoding(tmp_path, clip, run_profile):
    settings = make_settings(tmp_path / "cache", clip)
    first, calls, direct = run_profile(settings)
    assert calls == 1 and not first.from_cache
    assert first.entry.parent == tmp_path / "cache" / "profiles" and first.entry.is_file()
    codes = first.segment.codes
    assert codes.ndim == 2 and codes.shape[1] == 7  # 0.5 s at 12.5 frames/s, the last frame padded
    np.testing.assert_array_equal(codes, direct)  # the codes the tokenizer gives for the clip
    assert (first.segment.speaker, first.segment.text) == (0, "A reference clip.")
    mtime = first.entry.stat().st_mtime_ns

    second, calls, _ = run_profile(settings)
    assert calls == 0 and second.from_cache and second.entry == first.entry
    np.testing.assert_array_equal(second.segment.codes, codes)
    assert first.entry.stat().st_mtime_ns == mtime


@pytest.mark.slow  # builds the tiny Mimi once per module (~15 s on 2 busy cores)
def test_second_pipeline_reads_the_cache(tmp_path, clip, run_profile):
    settings = make_settings(tmp_path / "cache", clip)
    first, _, _ = run_profile(settings)
    counter = CountingTokenizer()
    plugins = Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch"})
    plugins.register(counter, name="counting-tokenizer")
    with Pipeline(settings, plugins) as fresh:  # a new process, say: nothing shared but the cache dir
        segment = profile_segment(settings, tokenizer_encoder(fresh))
    assert counter.calls == 0
    np.testing.assert_array_equal(segment.codes, first.segment.codes)


@pytest.mark.slow  # builds the tiny Mimi once per module (~15 s on 2 busy cores)
def test_different_audio_gets_a_different_entry(tmp_path, clip, write_wav, run_profile):
    other = write_wav("other.flac", tone(440.0, 0.5, 44100), 44100)
    a, _, _ = run_profile(make_settings(tmp_path / "cache", clip))
    b, calls, _ = run_profile(make_settings(tmp_path / "cache", other))
    assert calls == 1 and not b.from_cache and a.entry != b.entry
    assert not np.array_equal(a.segment.codes, b.segment.codes)
    names = [a.entry.name, b.entry.name]
    assert sorted(p.name for p in (tmp_path / "cache" / "profiles").iterdir()) == sorted(
        names + [n + ".sha256" for n in names])  # each entry with its checksum file


DAMAGES = {  # damage -> what the reported reason says
    "truncated": "does not match the recorded",
    "bytes-flipped": "does not match the recorded",
    "checksum-missing": "checksum file",
    "checksum-wrong": "does not match the recorded",
    "checksum-garbage": "is not a sha256sum listing",
    "other-key": "does not match",  # a consistent entry (checksum updated) made for other settings
    "bad-shape": "do not match",
}


def damage_entry(entry, damage: str) -> None:
    """Damage the cache entry ``entry`` (and its checksum file) in the way ``damage`` names."""
    from csm_core.artifact_check import checksum_path, seal

    data = entry.read_bytes()
    sums = checksum_path(entry)
    if damage == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "bytes-flipped":  # still valid JSON of the right shape: only the checksum tells
        middle = data.index(b"[[") + (data.index(b"]]") - data.index(b"[[")) // 2
        digit = next(i for i in range(middle, len(data)) if data[i:i + 1].isdigit())
        flipped = b"1" if data[digit:digit + 1] != b"1" else b"2"
        entry.write_bytes(data[:digit] + flipped + data[digit + 1:])
        json.loads(entry.read_text())  # the damage is silent to a parser
    elif damage == "checksum-missing":
        sums.unlink()
    elif damage == "checksum-wrong":
        sums.write_text(f"{'0' * 64}  {entry.name}\n")
    elif damage == "checksum-garbage":
        sums.write_bytes(bytes(range(256)))
    else:
        payload = json.loads(data)
        if damage == "other-key":
            payload["key"]["codec"] = "preset:small"
        else:
            payload["frames"] += 1
        entry.write_text(json.dumps(payload))
        seal(entry)


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_corrupt_or_mismatched_entry_is_reported_and_rebuilt(tmp_path, clip, damage, run_profile):
    settings = make_settings(tmp_path / "cache", clip)
    first, _, _ = run_profile(settings)
    assert (first.entry.parent / (first.entry.name + ".sha256")).is_file()
    damage_entry(first.entry, damage)
    events: list[str] = []
    rebuilt, calls, _ = run_profile(settings, events)
    assert calls == 1 and not rebuilt.from_cache
    assert len(events) == 1 and str(first.entry) in events[0] and "encoding" in events[0] and "again" in events[0]
    assert DAMAGES[damage] in events[0]
    np.testing.assert_array_equal(rebuilt.segment.codes, first.segment.codes)  # as a clean run
    again, calls, _ = run_profile(settings)
    assert calls == 0 and again.from_cache
    np.testing.assert_array_equal(again.segment.codes, first.segment.codes)


def test_the_checksum_catches_a_silent_change_of_the_codes(tmp_path, clip):
    """Bytes flipped inside the codes parse fine; without the checksum they would be used."""
    settings = make_settings(tmp_path, clip)
    codes = np.arange(24, dtype=np.int64).reshape(2, 12)
    first = encode_profile(settings.voice, settings, lambda audio: codes)
    damage_entry(first.entry, "bytes-flipped")
    events: list[str] = []
    again = encode_profile(settings.voice, settings, lambda audio: codes, report=events.append)
    assert not again.from_cache and len(events) == 1 and "checksum" in events[0]
    np.testing.assert_array_equal(again.segment.codes, codes)


def test_key_covers_what_changes_the_codes(tmp_path, clip):
    base = make_settings(tmp_path, clip)
    path = entry_path(base, profile_key(base, "a" * 64))
    assert path == entry_path(base, profile_key(make_settings(tmp_path, clip, text="Other words."), "a" * 64))
    for changed in (
        make_settings(tmp_path, clip, component_precision={"codec": "fp16"}),
        make_settings(tmp_path, clip, backends={"tokenizer": "onnxruntime"}),
        Settings(device="cpu", models={"preset": "small"}, cache_dir=tmp_path),
    ):
        assert entry_path(changed, profile_key(changed, "a" * 64)) != path
    assert entry_path(base, profile_key(base, "b" * 64)) != path
    # the codec stays fp32 whatever `precision` says, so that does not change the codes
    bf16 = make_settings(tmp_path, clip, precision="bf16")
    assert entry_path(bf16, profile_key(bf16, "a" * 64)) == path


def test_mimi_weights_file_is_hashed_into_the_key(tmp_path):
    weights = tmp_path / "mimi.safetensors"
    weights.write_bytes(b"one")
    settings = Settings(models={"mimi_path": str(weights)}, cache_dir=tmp_path)
    before = profile_key(settings, "a" * 64)["codec"]
    weights.write_bytes(b"two")
    os.utime(weights, ns=(1, 1))  # a different mtime: the memoized hash is not reused
    assert before.startswith("sha256:") and profile_key(settings, "a" * 64)["codec"] != before


def test_profile_segment_none_without_voice_and_speaker_override(tmp_path, clip):
    def never(audio):
        raise AssertionError("nothing to encode")

    assert profile_segment(make_settings(tmp_path), never) is None
    settings = make_settings(tmp_path, clip, speaker=3)
    fake = np.arange(8, dtype=np.int64).reshape(2, 4)
    assert profile_segment(settings, lambda audio: fake).speaker == 3
    settings = Settings(cache_dir=tmp_path, models={"preset": "tiny"},
                        voice={"audio": str(clip), "text": "hi", "speaker": 5})
    np.testing.assert_array_equal(profile_segment(settings, never).codes, fake)  # cached: not encoded
    assert profile_segment(settings, never).speaker == 5


def test_bad_tokenizer_output_and_missing_clip_are_clear_errors(tmp_path, clip):
    settings = make_settings(tmp_path, clip)
    with pytest.raises(CsmError, match=r"returned float64 codes of shape \(3,\).*integer codes \[K, F\]"):
        profile_segment(settings, lambda audio: np.zeros(3))
    with pytest.raises(CsmError, match=r"voice.audio '.*missing.wav' does not exist"):
        profile_segment(make_settings(tmp_path, tmp_path / "missing.wav"), lambda audio: None)


def test_audio_without_text_is_a_config_error_naming_both_fields(tmp_path, clip):
    config = tmp_path / "csm.toml"
    config.write_text(f'[voice]\naudio = "{clip}"\n')
    with pytest.raises(ConfigError, match=r"voice.audio is set but voice.text is not.*voice.audio.*voice.text"):
        load_settings(config, environ={})
    config.write_text('[voice]\ntext = "words"\n')
    with pytest.raises(ConfigError, match=r"voice.text is set but voice.audio is not"):
        load_settings(config, environ={})


def test_unwritable_cache_is_a_clear_error(tmp_path, clip):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    settings = make_settings(blocker, clip)
    with pytest.raises(CsmError, match=r"cannot write the voice profile cache entry .*make cache_dir"):
        profile_segment(settings, lambda audio: np.ones((2, 3), dtype=np.int64))
