"""The ``speed`` of a speech request: a pitch-preserving time stretch of the audio as it streams.

OpenAI takes ``speed`` from 0.25 to 4.0. 1.0 passes chunks through untouched; any other value runs
FFmpeg's ``atempo`` filter through PyAV (two 0.5 stages in a row below 0.5, as atempo takes 0.5 to
100), chunk by chunk, so a stretched stream still arrives while it is made. The output has about
``len(input) / speed`` samples. Without PyAV a speed other than 1.0 is a 400 that says what is missing.
"""

from __future__ import annotations

import numpy as np

from csm_serve.errors import bad_request
from csm_serve.formats import pyav_available

MIN_SPEED, MAX_SPEED = 0.25, 4.0


def check_speed(speed: float) -> None:
    """A 400 for a speed out of range, or for one that needs PyAV when it is missing."""
    if not (MIN_SPEED <= speed <= MAX_SPEED):
        raise bad_request(f"speed {speed} is out of range: give a value from {MIN_SPEED} to {MAX_SPEED}",
                          param="speed", code="invalid_value")
    if speed != 1.0 and not pyav_available():
        raise bad_request("speed other than 1.0 needs PyAV on this server (pip install av)",
                          param="speed", code="speed_unavailable")


def atempo_stages(speed: float) -> list[float]:
    """The atempo factors whose product is ``speed``, each within atempo's range."""
    stages = []
    while speed < 0.5:
        stages.append(0.5)
        speed /= 0.5
    return stages + [speed]


class Stretcher:
    """Time-stretches float32 mono chunks by ``speed``: ``push(chunk) -> samples so far``, then ``finish()``."""

    def __init__(self, speed: float, sample_rate: int):
        self.speed, self.sample_rate = speed, sample_rate
        self._graph = None
        if speed != 1.0:
            self._graph = self._build()
        self._pts = 0

    def _build(self):
        from av.filter import Graph

        graph = Graph()
        node = graph.add_abuffer(sample_rate=self.sample_rate, format="flt", layout="mono",
                                 time_base=f"1/{self.sample_rate}")
        for factor in atempo_stages(self.speed):
            stage = graph.add("atempo", f"{factor:.6f}")
            node.link_to(stage)
            node = stage
        sink = graph.add("abuffersink")
        node.link_to(sink)
        graph.configure()
        return graph

    def _pull(self) -> np.ndarray:
        import av

        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self._graph is None:
            return samples
        import av

        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = self.sample_rate, self._pts
        self._pts += samples.shape[1]
        self._graph.push(frame)
        return self._pull()

    def finish(self) -> np.ndarray:
        if self._graph is None:
            return np.zeros(0, np.float32)
        self._graph.push(None)
        out = self._pull()
        self._graph = None
        return out
