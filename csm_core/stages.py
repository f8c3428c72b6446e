"""What each stage object offers, and the records that flow between stages.

A stage implementation's factory (see :mod:`csm_core.records`) returns an object with the methods of
the matching protocol below. Audio crosses stages as :class:`csm_core.audio.Audio`; Mimi codes as
integer arrays [K, F] (K codebooks, F frames at 12.5 per second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from csm_core.audio import Audio


@dataclass(frozen=True)
class Segment:
    """One utterance of the conversation as CSM context: who spoke, what, and its audio codes."""

    speaker: int
    text: str
    codes: np.ndarray | None = None  # [K, F] Mimi codes, when the utterance has audio

    def to_dict(self) -> dict:
        return {
            "speaker": self.speaker,
            "text": self.text,
            "codes": None if self.codes is None else self.codes.astype(int).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Segment":
        codes = data.get("codes")
        return cls(
            speaker=int(data["speaker"]),
            text=str(data["text"]),
            codes=None if codes is None else np.asarray(codes, dtype=np.int64),
        )


@dataclass(frozen=True)
class SpeechParams:
    """Sampling parameters for one utterance (after the emotion map and CLI flags are applied)."""

    temperature: float
    top_k: int
    top_p: float
    max_frames: int
    seed: int | None = None


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    speaker: int
    params: SpeechParams
    context: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class SpeechChunk:
    """Audio as it is generated, with the codes it was decoded from ([K, f])."""

    samples: np.ndarray
    codes: np.ndarray


@dataclass(frozen=True)
class ReplyRequest:
    transcript: str
    sentiment: Any | None
    history: tuple[Segment, ...]
    emotions: tuple[str, ...]


@dataclass(frozen=True)
class Reply:
    """The language model's answer. ``fallback`` says why structure parsing fell back, if it did."""

    text: str
    emotion: str
    fallback: str | None = None
    raw: str = field(default="", repr=False)


@runtime_checkable
class Tokenizer(Protocol):
    sample_rate: int

    def encode(self, audio: Audio) -> np.ndarray: ...

    def decode(self, codes: np.ndarray) -> Audio: ...


@runtime_checkable
class Transcriber(Protocol):
    def transcribe(self, audio: Audio) -> str: ...


@runtime_checkable
class SentimentAnalyzer(Protocol):
    def analyze(self, audio: Audio, codes: np.ndarray | None) -> Any:
        """Returns an object with ``label`` (the emotion heard, a str) and ``to_dict()``."""


@runtime_checkable
class ReplyModel(Protocol):
    def reply(self, request: ReplyRequest) -> Reply: ...


@runtime_checkable
class Speaker(Protocol):
    sample_rate: int

    def speak(self, request: SpeechRequest) -> Iterator[SpeechChunk]: ...
