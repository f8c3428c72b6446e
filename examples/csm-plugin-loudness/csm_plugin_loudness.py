"""An example third-party plugin for csm-multi.

It shows the two kinds of hook:

- ``register_sentiment_analyzers`` registers a stage implementation, selected by name in the config
  (``[stages] sentiment = "loudness"``);
- ``run_stage`` as a wrapper acts around every stage of every turn (here: log how long each took).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from csm_core import hookimpl
from csm_core.records import StageImpl

log = logging.getLogger("csm.loudness")


@dataclass(frozen=True)
class Loudness:
    """How loud the user spoke: RMS level in dBFS, and the emotion it suggests."""

    rms_dbfs: float
    label: str

    def to_dict(self) -> dict:
        return asdict(self)


class LoudnessAnalyzer:
    """Loud speech (above ``threshold_dbfs``) reads as excited, the rest as calm."""

    def __init__(self, threshold_dbfs: float = -20.0):
        self.threshold_dbfs = threshold_dbfs

    def analyze(self, audio, codes) -> Loudness:
        rms = float(np.sqrt(np.mean(np.square(audio.samples, dtype=np.float64))))
        dbfs = 20 * np.log10(max(rms, 1e-10))
        return Loudness(round(dbfs, 2), "excited" if dbfs > self.threshold_dbfs else "calm")


def _analyzer(context) -> LoudnessAnalyzer:
    options = context.settings.options.get("loudness", {})
    return LoudnessAnalyzer(float(options.get("threshold_dbfs", -20.0)))


@hookimpl
def register_sentiment_analyzers(register):
    register(StageImpl(name="loudness", factory=_analyzer, description="RMS level -> excited or calm"))


@hookimpl(wrapper=True)
def run_stage(stage, call, turn):
    started = time.perf_counter()
    result = yield
    log.info("%s took %.3f s", stage, time.perf_counter() - started)
    return result
