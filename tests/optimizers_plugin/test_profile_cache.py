"""The ``profile-cache`` optimizer: an LRU of tokenizer encodings; exact, counted, evicting, switchable."""

from __future__ import annotations

import numpy as np
import pytest

from audio_signals import tone
from csm_core import hookimpl
from csm_core.audio import Audio
from csm_core.config import Settings
from csm_core.errors import ConfigError
from csm_core.pipeline import Pipeline, Turn
from csm_core.plugins import Plugins
from csm_core.quality import code_agreement
from csm_core.registry import Registry
from csm_core.voice_profile import encode_profile, tokenizer_encoder
from csm_optimizers import profile_cache
from csm_optimizers.profile_cache import LruCache, shared_cache

pytest.importorskip("torch")


class OptimizerRecords:
    """Registers this module's optimizer unless the in-tree plugin already does (MODULES)."""

    @hookimpl
    def register_optimizers(self, register):
        register(profile_cache.OPTIMIZER)


def make_plugins() -> Plugins:
    plugins = Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,optimizers"})
    if profile_cache.NAME not in Registry.collect(plugins).optimizers:
        plugins.register(OptimizerRecords(), name="test-profile-cache-record")
    return plugins


def settings(tmp_path, on: bool, size: int = 32) -> Settings:
    return Settings(
        device="cpu", models={"preset": "tiny"}, cache_dir=tmp_path,
        optimizers=["profile-cache"] if on else [], options={"profile-cache": {"size": size}},
    )


def clip(frequency: float) -> Audio:
    return Audio(tone(frequency, 0.24, 24000), 24000)  # 3 frames


def encode(pipeline: Pipeline, audio: Audio, work: list) -> np.ndarray:
    """The tokenizer stage through ``run_stage`` (as the pipeline runs it); ``work`` counts real encodes."""
    stage = pipeline.stage("tokenizer")

    def call():
        work.append(1)
        return stage.encode(audio)

    return pipeline.plugins.hook.run_stage(stage="tokenizer", call=call, turn=Turn(input_audio=audio))


def test_lru_counts_hits_and_misses_and_evicts_the_least_recently_used():
    cache = LruCache(2)
    a, b, c = (np.full((2, 3), v) for v in (1, 2, 3))
    assert cache.get("a") is None
    cache.put("a", a)
    cache.put("b", b)
    assert np.array_equal(cache.get("a"), a)  # "a" is now the most recently used
    cache.put("c", c)  # evicts "b"
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (1, 1, 1)
    got = cache.get("a")
    got[0, 0] = 99  # callers get copies: the cached codes cannot be changed through them
    assert cache.get("a")[0, 0] == 1
    with pytest.raises(ValueError, match="size=0"):
        LruCache(0)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """The cache switched on (size 2) over the tiny weights, and the unoptimized encoder: the same
    tokenizer stage called directly, which is what ``run_stage`` does without the optimizer."""
    tmp = tmp_path_factory.mktemp("profile-cache")
    with Pipeline(settings(tmp, True, size=2), make_plugins()) as on:
        stage = on.stage("tokenizer")

        def off(audio, work):
            work.append(1)
            return stage.encode(audio)

        yield on, off


@pytest.mark.slow  # builds the tiny Mimi (~15 s on 2 busy cores)
def test_quality_gate_identical_codes_and_fewer_encodes(pipelines):
    on, off = pipelines
    cache = shared_cache(2)
    cache.clear()
    clips = [clip(220.0), clip(330.0), clip(220.0), clip(220.0)]
    work_on, work_off = [], []
    codes_on = [encode(on, a, work_on) for a in clips]
    codes_off = [off(a, work_off) for a in clips]
    for with_cache, without in zip(codes_on, codes_off):
        assert code_agreement(without, with_cache) == 1.0 and with_cache.shape == without.shape
    assert len(work_off) == 4 and len(work_on) == 2  # the repeated clip is encoded once
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (2, 2, 0)


@pytest.mark.slow
def test_eviction_at_size_re_encodes(pipelines):
    on, _ = pipelines
    cache = shared_cache(2)
    cache.clear()
    work = []
    for frequency in (200.0, 300.0, 400.0, 200.0):  # the fourth was evicted by the third
        encode(on, clip(frequency), work)
    assert len(work) == 4 and cache.stats.evictions == 2 and len(cache) == 2
    encode(on, clip(200.0), work)
    assert len(work) == 4 and cache.stats.hits == 1


@pytest.mark.slow
def test_voice_profile_encoded_once_across_disk_cache_misses(pipelines, tmp_path, write_wav):
    on, _ = pipelines
    shared_cache(2).clear()
    path = write_wav("voice.wav", tone(250.0, 0.4, 16000), 16000)
    counted = []

    class Count:
        @hookimpl(wrapper=True)
        def run_stage(self, stage, call, turn):
            result = yield
            counted.append(stage)
            return result

    on.plugins.register(Count(), name="count-profile")
    try:
        profiles = []
        for folder in ("a", "b"):  # two cache dirs, as two servers' sessions without a shared disk
            s = settings(tmp_path / folder, True, size=2).model_copy(
                update={"voice": Settings(voice={"audio": str(path), "text": "hi"}).voice})
            profiles.append(encode_profile(s.voice, s, tokenizer_encoder(on)))
    finally:
        on.plugins.unregister("count-profile")
    assert not profiles[0].from_cache and not profiles[1].from_cache  # disk misses both times
    assert counted == ["tokenizer", "tokenizer"] and shared_cache(2).stats.hits == 1
    np.testing.assert_array_equal(profiles[0].segment.codes, profiles[1].segment.codes)


@pytest.mark.slow
def test_the_cache_lives_in_memory_only(pipelines):
    """The optimizer writes nothing to disk (so no cached file of it can be damaged; the disk cache of
    voice profiles is checked on load, see tests/core/test_voice_profile.py), and what it keeps cannot
    be changed through the codes it hands out."""
    on, _ = pipelines
    cache = shared_cache(2)
    cache.clear()
    cache_dir = on.settings.resolved_cache_dir()
    before = sorted(cache_dir.rglob("*"))
    work: list = []
    first = encode(on, clip(500.0), work)
    expected = first.copy()
    first[...] = 0  # a caller that changes its codes in place
    again = encode(on, clip(500.0), work)
    assert len(work) == 1 and cache.stats.hits == 1
    np.testing.assert_array_equal(again, expected)
    assert sorted(cache_dir.rglob("*")) == before
    assert len(cache) == 1 and not any(codes.flags.writeable for codes in cache._entries.values())


def test_switched_on_and_off_by_config(tmp_path):
    """Listed in ``optimizers``: its hooks are registered for the pipeline's life; not listed: absent."""
    with Pipeline(settings(tmp_path, True), make_plugins()) as on:
        assert on.plugins.manager.has_plugin("optimizer:profile-cache")
    assert not on.plugins.manager.has_plugin("optimizer:profile-cache")
    with Pipeline(settings(tmp_path, False), make_plugins()) as off:
        assert not off.plugins.manager.has_plugin("optimizer:profile-cache")
    bad = Settings(optimizers=["profile-cache"], options={"profile-cache": {"size": 0}})
    with pytest.raises(ConfigError, match=r"\[options.profile-cache\]"):
        Pipeline(bad, make_plugins())
