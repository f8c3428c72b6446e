"""Typed measurements of a conversation turn."""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, field


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass(frozen=True)
class StageTiming:
    stage: str
    implementation: str
    backend: str | None
    seconds: float
    peak_rss_bytes: int  # process peak after the stage (monotonic over the process)
    peak_device_bytes: int | None = None


@dataclass
class TurnMetrics:
    """Per-stage timings and the figures users compare backends by. Times are seconds.

    - ``stages``: each stage's run, its loading left out;
    - ``time_to_first_audio_s``: from the turn's start (the ``speak``/``turn`` call) to the first audio
      chunk, so stage loading and waiting that the turn did are included;
    - ``generation_seconds``: the tts stage's run (loading left out), the numerator of the real-time factor;
    - ``load_seconds``: time this turn spent building stages, or waiting for a background load;
    - ``startup_seconds``: the ``Pipeline.preload`` call before this turn, from call to return (with
      progressive loading that is only the time to check names and start the loader); ``None`` on
      turns without a preload before them.
    """

    stages: list[StageTiming] = field(default_factory=list)
    time_to_first_audio_s: float | None = None
    audio_seconds: float = 0.0
    generation_seconds: float = 0.0
    frames: int = 0
    events: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    startup_seconds: float | None = None

    @property
    def real_time_factor(self) -> float | None:
        """Generation time divided by audio duration: below 1 is faster than real time."""
        return self.generation_seconds / self.audio_seconds if self.audio_seconds else None

    @property
    def frames_per_second(self) -> float | None:
        return self.frames / self.generation_seconds if self.generation_seconds else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["real_time_factor"] = self.real_time_factor
        data["frames_per_second"] = self.frames_per_second
        return data
