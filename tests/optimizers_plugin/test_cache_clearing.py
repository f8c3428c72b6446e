"""The ``cache-clearing`` optimizer: its adaptive policy on its own, its CPU memory probe, and a real
tiny-preset pipeline that clears between frames and still gives the unoptimized codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from csm_core.config import Settings
from csm_core.errors import ConfigError
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins
from csm_core.registry import Registry
from csm_optimizers.cache_clearing import (
    MIB,
    AdaptiveInterval,
    CacheClearing,
    CpuMemory,
    process_rss_bytes,
    system_memory_pressure,
)


def policy(**overrides) -> AdaptiveInterval:
    values = dict(min_interval=2, max_interval=16, high_water=0.8, small_gain_bytes=MIB)
    values.update(overrides)
    return AdaptiveInterval(**values)


def safe_points_until_clear(p: AdaptiveInterval, pressure: float | None, limit: int = 1000) -> int:
    for count in range(1, limit + 1):
        if p.should_clear(pressure):
            return count
    raise AssertionError(f"no clear in {limit} safe points")


def test_clears_after_interval_and_grows_it_after_small_gains_up_to_max():
    p = policy()
    gaps = []
    for _ in range(6):
        gaps.append(safe_points_until_clear(p, pressure=0.1))
        p.cleared(released_bytes=0)
    assert gaps == [2, 4, 8, 16, 16, 16]
    assert p.interval == 16


def test_a_clear_that_releases_enough_keeps_the_interval():
    p = policy(initial_interval=4)
    assert safe_points_until_clear(p, 0.1) == 4
    p.cleared(released_bytes=8 * MIB)
    assert p.interval == 4
    p.cleared(released_bytes=None)  # unmeasurable counts as a small gain
    assert p.interval == 8


def test_high_pressure_clears_early_and_shrinks_the_interval_down_to_min():
    p = policy(initial_interval=16)
    assert safe_points_until_clear(p, pressure=0.95) == 2  # min_interval, not 16
    assert p.interval == 4  # halved at each high reading: 16 -> 8 -> 4
    p.cleared(released_bytes=64 * MIB)
    assert safe_points_until_clear(p, pressure=0.95) == 2
    assert p.interval == 2  # 4 -> 2 -> 2: never below min_interval
    for _ in range(5):
        p.cleared(released_bytes=0)  # a small gain doubles it, the next high reading halves it again
        assert safe_points_until_clear(p, pressure=0.95) == 2
    assert p.interval == 2


def test_unknown_pressure_leaves_the_interval_alone():
    p = policy(initial_interval=8)
    assert safe_points_until_clear(p, pressure=None) == 8
    assert p.interval == 8


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"min_interval": 0}, "min_interval"),
        ({"max_interval": 1, "min_interval": 4}, "max_interval (1) must be >= min_interval (4)"),
        ({"high_water": 1.5}, "high_water"),
        ({"initial_interval": 64, "max_interval": 32}, "initial_interval (64) must lie in"),
        ({"budget_bytes": -5}, "budget_bytes"),
        ({"gc_generation": 3}, "gc_generation"),
        ({"every": 50}, "every: unknown setting"),
    ],
)
def test_bad_options_are_named(options, field):
    settings = Settings(optimizers=["cache-clearing"], options={"cache-clearing": options})
    with pytest.raises(ConfigError) as info:
        Pipeline(settings, Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,optimizers"}))
    message = str(info.value)
    assert "[options.cache-clearing]" in message and field in message


def test_policy_constructor_checks_its_arguments():
    with pytest.raises(ValidationError, match="min_interval"):
        policy(min_interval=3, max_interval=2)


def test_cpu_probe_reads_memory_and_releases_with_gc_and_malloc_trim():
    rss = process_rss_bytes()
    if rss is None:
        pytest.skip("no /proc/self/statm on this platform")
    assert rss > 10 * MIB
    assert 0.0 <= system_memory_pressure() <= 1.0
    memory = CpuMemory(budget_bytes=4 * rss, gc_generation=2)
    assert 0.1 < memory.pressure() < 0.5
    assert memory.release() is not None
    if memory.malloc_trim is None:
        assert memory.release_method == "gc.collect(2) + no malloc_trim in this C library"
    else:
        assert memory.release_method == "gc.collect(2) + malloc_trim(0)"
    assert CpuMemory(None, gc_generation=None).release_method.startswith(("malloc_trim", "no malloc_trim"))


HEAP_WITH_HOLES = """
from csm_optimizers.cache_clearing import CpuMemory
memory = CpuMemory(None, gc_generation=None)
garbage, pins = [], []
for _ in range(800):  # ~50 MiB of 64 KiB blocks, each followed by a small live one
    garbage.append(bytearray(1 << 16))
    pins.append(bytearray(600))
del garbage  # holes inside the heap: free() keeps them, malloc_trim(0) hands their pages back
print(memory.malloc_trim is not None, memory.release())
"""


def test_cpu_release_hands_freed_heap_pages_back():
    """In a fresh interpreter (this one's heap depends on the tests before): measured, not assumed."""
    result = subprocess.run([sys.executable, "-c", HEAP_WITH_HOLES], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    has_trim, released = result.stdout.split()
    if has_trim != "True":
        pytest.skip("this C library has no malloc_trim")
    if released == "None":
        pytest.skip("no /proc/self/statm on this platform")
    assert int(released) > 30 * MIB


def test_unknown_device_is_refused_with_the_device_named():
    registry = Registry.collect(Plugins.from_environment({"CSM_LOAD_PLUGINS": "optimizers"}))
    from csm_core.records import StageContext

    optimizer = CacheClearing(StageContext(stage="optimizer", settings=Settings(), registry=registry))
    with pytest.raises(ValueError, match="device 'mps'"):
        optimizer.at_safe_point(stage="tts", device="mps")


@pytest.mark.slow
def test_tiny_pipeline_gives_identical_codes_and_counts_clears():
    pytest.importorskip("torch")
    generation = {"temperature": 0, "max_new_frames": 12}
    runs = {}
    for optimizers in ([], ["cache-clearing"]):
        settings = Settings(
            models={"preset": "tiny"}, device="cpu", optimizers=optimizers, generation=generation,
            options={"cache-clearing": {"min_interval": 1, "max_interval": 4}},
        )
        plugins = Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,optimizers"})
        with Pipeline(settings, plugins) as pipeline:
            turn = pipeline.speak("Clear the caches between frames.")
            clearing = plugins.manager.get_plugin("optimizer:cache-clearing")
            runs[tuple(optimizers)] = (turn, None if clearing is None else clearing.counters)
    (plain, none), (optimized, counters) = runs[()], runs[("cache-clearing",)]
    assert none is None
    assert plain.reply_codes.shape[1] > 0
    assert (optimized.reply_codes == plain.reply_codes).all() and optimized.reply_codes.shape == plain.reply_codes.shape
    frames = optimized.reply_codes.shape[1]
    assert counters.safe_points >= frames
    assert counters.clears > 0 and counters.clears <= counters.safe_points
    summary = [e for e in optimized.metrics.events if e.startswith("cache-clearing:")]
    assert len(summary) == 1 and f"{counters.clears} clears in {counters.safe_points} safe points" in summary[0]
    assert not any(e.startswith("cache-clearing:") for e in plain.metrics.events)


def optimizer_with(**options) -> CacheClearing:
    from csm_core.records import StageContext

    settings = Settings(optimizers=["cache-clearing"], options={"cache-clearing": options})
    registry = Registry.collect(Plugins.from_environment({"CSM_LOAD_PLUGINS": "optimizers"}))
    return CacheClearing(StageContext(stage="optimizer", settings=settings, registry=registry))


def test_over_budget_process_clears_every_min_interval_and_counts_it():
    if process_rss_bytes() is None:
        pytest.skip("no /proc/self/statm on this platform")
    # a budget far below this process's RSS: pressure 1.0 at every safe point
    optimizer = optimizer_with(
        min_interval=2, max_interval=64, initial_interval=64, budget_bytes=MIB, small_gain_bytes=1 << 40
    )
    for _ in range(10):
        optimizer.at_safe_point(stage="tts", device="cpu")
    counters = optimizer.counters
    assert counters.safe_points == 10 and counters.clears == 5
    assert counters.peak_pressure == 1.0 and counters.pressure_unavailable == 0
    # halved at every reading (64 -> 32 -> 16, ...), doubled by every small-gain clear: 2 -> 4 at the end
    assert optimizer.policy.interval == 4


def test_roomy_budget_clears_at_the_interval_and_backs_off():
    rss = process_rss_bytes()
    if rss is None:
        pytest.skip("no /proc/self/statm on this platform")
    # pressure ~0.1: only the interval decides; each clear frees little, so the interval doubles
    optimizer = optimizer_with(min_interval=1, max_interval=8, budget_bytes=10 * rss, small_gain_bytes=1 << 40)
    for _ in range(15):
        optimizer.at_safe_point(stage="tts", device="cpu")
    assert optimizer.counters.clears == 4  # after safe points 1, 3, 7, 15
    assert optimizer.policy.interval == 8
    assert 0.0 < optimizer.counters.peak_pressure < 0.85
