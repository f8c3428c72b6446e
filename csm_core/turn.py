"""What one turn produced: the record the pipeline fills in stage by stage and ``run_stage`` wrappers see."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from csm_core.audio import Audio
from csm_core.metrics import TurnMetrics
from csm_core.stages import Reply, SpeechParams


@dataclass
class Turn:
    """What one turn produced. Wrappers of ``run_stage`` see it while it is being filled in."""

    input_audio: Audio | None = None
    codes: np.ndarray | None = None
    transcript: str | None = None
    sentiment: Any = None
    reply: Reply | None = None
    params: SpeechParams | None = None
    audio: Audio | None = None
    reply_codes: np.ndarray | None = None
    metrics: TurnMetrics = field(default_factory=TurnMetrics)
    started: float = field(default_factory=time.perf_counter, repr=False)  # perf_counter() at the turn's start

    def to_dict(self) -> dict:
        """The turn for ``--json``: text, sentiment, emotion, parameters and metrics (no samples)."""
        sentiment = self.sentiment
        return {
            "transcript": self.transcript,
            "sentiment": sentiment.to_dict() if hasattr(sentiment, "to_dict") else sentiment,
            "emotion": self.reply.emotion if self.reply else None,
            "reply": self.reply.text if self.reply else None,
            "reply_fallback": self.reply.fallback if self.reply else None,
            "params": None if self.params is None else vars(self.params),
            "audio_seconds": self.audio.duration_s if self.audio else 0.0,
            "metrics": self.metrics.to_dict(),
        }
