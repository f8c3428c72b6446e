"""The ``cache-clearing`` optimizer: give cached allocator memory back at safe points, as often as
memory pressure asks for.

What it changes: nothing a stage computes. At each ``at_safe_point(stage, device)`` (the csm tts
stage calls it after every frame, when no intermediate tensor is alive) it reads a *pressure* figure
in [0, 1] and asks :class:`AdaptiveInterval` whether to release memory now:

- CUDA (``device`` starts with ``cuda``): pressure = ``memory_reserved / budget_bytes`` when a
  budget is configured, else ``1 - free / total`` from ``torch.cuda.mem_get_info`` (the whole GPU,
  other processes included). Release = ``torch.cuda.empty_cache()``; bytes released = the drop in
  ``torch.cuda.memory_reserved``.
- CPU: pressure = process RSS / ``budget_bytes`` when configured, else ``1 - MemAvailable /
  MemTotal`` from ``/proc/meminfo`` (the machine's). Release = ``gc.collect(gc_generation)`` then
  glibc's ``malloc_trim(0)`` (returns freed heap pages to the system) when the C library has it; bytes
  released = the drop in RSS (``/proc/self/statm``). Where ``malloc_trim`` or ``/proc`` is missing
  the counters say so (``trim_unavailable``, ``pressure_unavailable``) and the summary names it.

The policy (pure, in :class:`AdaptiveInterval`): clear when ``interval`` frames have passed since
the last clear, or sooner (after at least ``min_interval``) when pressure exceeds ``high_water``;
pressure above ``high_water`` also halves the interval (down to ``min_interval``); a clear that
released less than ``small_gain_bytes`` doubles it (up to ``max_interval``). So a process with
memory to spare soon clears rarely, and one near its limit clears every ``min_interval`` frames.

Effect: exact. Releasing cached memory changes no tensor; codes are identical to the unoptimized run
(the quality gate, tested on the tiny preset with greedy decoding and ``min_interval = 1``).

Risk: time. ``empty_cache`` makes the next allocations go to the CUDA driver (slower, and it
synchronizes). On CPU ``gc.collect(0)`` (the default, young objects only) and ``malloc_trim`` are cheap,
but a full ``gc.collect()`` walks every Python object and can take longer than a frame
(docs/optimizers.md), so ``gc_generation = 2`` is for processes that create reference cycles per frame. Tensors are freed by reference counting, not
by the collector, so generation 0 loses nothing for the stages here. The adaptive interval bounds the
cost: at most one clear per ``min_interval`` frames.

Options, ``[options.cache-clearing]``: see :class:`CacheClearingOptions`. Counters are kept per
pipeline (:class:`ClearingCounters`); after each tts stage run a one-line summary of that run is
added to the turn's events.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from csm_core import hookimpl
from csm_core.config import plugin_options
from csm_core.records import Optimizer, StageContext

log = logging.getLogger("csm.optimizers.cache_clearing")
MIB = 1 << 20


class CacheClearingOptions(BaseModel):
    """``[options.cache-clearing]``. Intervals count safe points (frames for the csm tts stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_interval: int = Field(4, ge=1, description="fewest frames between two clears")
    max_interval: int = Field(256, ge=1, description="most frames between two clears")
    initial_interval: int | None = Field(None, ge=1, description="interval to start from; default min_interval")
    high_water: float = Field(0.85, gt=0.0, lt=1.0, description="pressure above which to clear and shrink")
    small_gain_bytes: int = Field(4 * MIB, ge=0, description="a clear releasing less grows the interval")
    gc_generation: int | None = Field(
        0, ge=0, le=2, description="CPU: gc.collect(generation) before malloc_trim; null skips it"
    )
    budget_bytes: int | None = Field(
        None, gt=0, description="memory this process may use (RSS on CPU, reserved on CUDA); default: the machine's"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "CacheClearingOptions":
        if self.max_interval < self.min_interval:
            raise ValueError(
                f"max_interval ({self.max_interval}) must be >= min_interval ({self.min_interval})"
            )
        start = self.initial_interval
        if start is not None and not self.min_interval <= start <= self.max_interval:
            raise ValueError(
                f"initial_interval ({start}) must lie in [min_interval, max_interval] = "
                f"[{self.min_interval}, {self.max_interval}]"
            )
        return self


class AdaptiveInterval:
    """When to clear: a pure policy fed one pressure reading per safe point.

    ``should_clear(pressure)`` counts a safe point and says whether to clear now; after clearing call
    ``cleared(released_bytes)``. ``pressure`` is a fraction in [0, 1] or ``None`` when unknown
    (then only the interval decides).
    """

    def __init__(self, min_interval: int, max_interval: int, high_water: float,
                 small_gain_bytes: int, initial_interval: int | None = None):
        CacheClearingOptions(  # one place for the checks, with the field named in the error
            min_interval=min_interval, max_interval=max_interval, high_water=high_water,
            small_gain_bytes=small_gain_bytes, initial_interval=initial_interval,
        )
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.high_water = high_water
        self.small_gain_bytes = small_gain_bytes
        self.interval = initial_interval or min_interval
        self.since_clear = 0

    @classmethod
    def from_options(cls, options: CacheClearingOptions) -> "AdaptiveInterval":
        return cls(options.min_interval, options.max_interval, options.high_water,
                   options.small_gain_bytes, options.initial_interval)

    def should_clear(self, pressure: float | None) -> bool:
        self.since_clear += 1
        high = pressure is not None and pressure > self.high_water
        if high:
            self.interval = max(self.min_interval, self.interval // 2)
        if self.since_clear >= self.interval:
            return True
        return high and self.since_clear >= self.min_interval

    def cleared(self, released_bytes: int | None) -> None:
        """Record a clear; ``released_bytes`` ``None`` (unmeasurable) counts as a small gain."""
        self.since_clear = 0
        if released_bytes is None or released_bytes < self.small_gain_bytes:
            self.interval = min(self.max_interval, self.interval * 2)


@dataclass(frozen=True)
class ClearingCounters:
    """What the optimizer did. ``released_bytes`` sums the measured drops (never negative);
    ``peak_pressure`` is the highest reading (``None`` before any)."""

    safe_points: int = 0
    clears: int = 0
    released_bytes: int = 0
    clear_seconds: float = 0.0
    peak_pressure: float | None = None
    trim_unavailable: int = 0  # CPU clears done with gc.collect only
    pressure_unavailable: int = 0  # safe points without a pressure reading

    def record(self, pressure: float | None) -> "ClearingCounters":
        """These counters after one more safe point with reading ``pressure``."""
        peak = self.peak_pressure
        if pressure is not None:
            peak = pressure if peak is None else max(peak, pressure)
        return replace(
            self, safe_points=self.safe_points + 1, peak_pressure=peak,
            pressure_unavailable=self.pressure_unavailable + (pressure is None),
        )

    def add_clear(self, released_bytes: int | None, seconds: float, trimmed: bool) -> "ClearingCounters":
        """These counters after one more clear."""
        return replace(
            self, clears=self.clears + 1, released_bytes=self.released_bytes + (released_bytes or 0),
            clear_seconds=self.clear_seconds + seconds, trim_unavailable=self.trim_unavailable + (not trimmed),
        )


# -- memory probes: pressure in [0, 1] (or None), release -> bytes released (or None) ------------------
def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def process_rss_bytes() -> int | None:
    """Resident memory of this process now (``/proc/self/statm``), ``None`` where there is no /proc."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def system_memory_pressure() -> float | None:
    """``1 - MemAvailable / MemTotal`` from ``/proc/meminfo``, ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in handle if line.strip()}
        return _clip(1.0 - fields["MemAvailable"] / fields["MemTotal"])
    except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError):
        return None


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class CpuMemory:
    """Pressure and release for the process heap (see the module docstring)."""

    def __init__(self, budget_bytes: int | None, gc_generation: int | None = 0):
        self.budget_bytes = budget_bytes
        self.gc_generation = gc_generation
        self.malloc_trim = _load_malloc_trim()
        steps = [] if gc_generation is None else [f"gc.collect({gc_generation})"]
        steps.append("malloc_trim(0)" if self.malloc_trim else "no malloc_trim in this C library")
        self.release_method = " + ".join(steps)

    def pressure(self) -> float | None:
        if self.budget_bytes is None:
            return system_memory_pressure()
        rss = process_rss_bytes()
        return None if rss is None else _clip(rss / self.budget_bytes)

    def release(self) -> int | None:
        before = process_rss_bytes()
        if self.gc_generation is not None:
            gc.collect(self.gc_generation)
        if self.malloc_trim is not None:
            self.malloc_trim(0)
        after = process_rss_bytes()
        return None if before is None or after is None else max(0, before - after)


class CudaMemory:
    """Pressure and release for torch's CUDA caching allocator on one device."""

    release_method = "torch.cuda.empty_cache"
    malloc_trim = None

    def __init__(self, device: str, budget_bytes: int | None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes

    def pressure(self) -> float | None:
        cuda = self.torch.cuda
        if self.budget_bytes is not None:
            return _clip(cuda.memory_reserved(self.device) / self.budget_bytes)
        free, total = cuda.mem_get_info(self.device)
        return _clip(1.0 - free / total)

    def release(self) -> int | None:
        cuda = self.torch.cuda
        before = cuda.memory_reserved(self.device)
        cuda.empty_cache()
        return max(0, before - cuda.memory_reserved(self.device))


class CacheClearing:
    """The optimizer object: an ``at_safe_point`` hook driving :class:`AdaptiveInterval`, and a
    ``run_stage`` wrapper that adds a summary of each tts stage run to the turn's events."""

    def __init__(self, context: StageContext):
        self.context = context
        self.options: CacheClearingOptions = plugin_options(context.settings, "cache-clearing", CacheClearingOptions)
        self.policy = AdaptiveInterval.from_options(self.options)
        self.counters = ClearingCounters()  # over the pipeline's life
        self.window = ClearingCounters()  # since the current tts stage run began
        self._memories: dict[str, CpuMemory | CudaMemory] = {}

    def memory(self, device: str) -> CpuMemory | CudaMemory:
        """The probe for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``), made once per device."""
        if device not in self._memories:
            if device.startswith("cuda"):
                self._memories[device] = CudaMemory(device, self.options.budget_bytes)
            elif device == "cpu":
                self._memories[device] = CpuMemory(self.options.budget_bytes, self.options.gc_generation)
            else:
                raise ValueError(
                    f"cache-clearing: safe point on device {device!r}, which it cannot clear; "
                    "it handles 'cpu' and 'cuda[:N]': leave the optimizer out for this device"
                )
        return self._memories[device]

    @hookimpl
    def at_safe_point(self, stage: str, device: str) -> None:
        memory = self.memory(device)
        pressure = memory.pressure()
        self.counters, self.window = self.counters.record(pressure), self.window.record(pressure)
        if self.policy.should_clear(pressure):
            started = time.perf_counter()
            released = memory.release()
            self.policy.cleared(released)
            seconds = time.perf_counter() - started
            trimmed = not isinstance(memory, CpuMemory) or memory.malloc_trim is not None
            self.counters = self.counters.add_clear(released, seconds, trimmed)
            self.window = self.window.add_clear(released, seconds, trimmed)

    @hookimpl(wrapper=True)
    def run_stage(self, stage: str, call, turn):
        if stage != "tts":
            return (yield)
        self.window = ClearingCounters()
        result = yield
        summary = self.summary(self.window)
        log.info(summary)
        if turn is not None:
            turn.metrics.events.append(summary)
        return result

    def summary(self, run: ClearingCounters) -> str:
        """One line describing ``run``: clears, released memory, method, interval and pressure."""
        methods = ", ".join(sorted({m.release_method for m in self._memories.values()})) or "none"
        pressure = "unknown" if run.peak_pressure is None else f"{run.peak_pressure:.2f}"
        text = (
            f"cache-clearing: {run.clears} clears in {run.safe_points} safe points, released "
            f"{run.released_bytes / MIB:.1f} MiB in {run.clear_seconds * 1000:.1f} ms ({methods}); "
            f"interval now {self.policy.interval}, peak pressure {pressure} (high water {self.options.high_water})"
        )
        if run.pressure_unavailable:
            text += f"; pressure unreadable at {run.pressure_unavailable} safe points"
        if run.trim_unavailable:
            text += f"; {run.trim_unavailable} CPU clears without malloc_trim (not in this C library)"
        return text


OPTIMIZER = Optimizer(
    name="cache-clearing",
    factory=CacheClearing,
    effect="exact",
    description="release cached allocator memory between frames, as often as memory pressure asks",
)
