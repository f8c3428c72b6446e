"""What each stage object offers, and the records that flow between stages.

A stage implementation's factory (see :mod:`csm_core.records`) returns an object with the members of
the matching protocol below (:data:`STAGE_PROTOCOLS`). Audio crosses stages as
:class:`csm_core.audio.Audio`; Mimi codes as integer arrays [K, F] (K codebooks, F frames at 12.5 per
second).

**Optional capabilities.** Beyond its protocol a stage object may offer more, and says so by listing
the capability's name in its ``capabilities`` attribute (a set of strings; absent: none). The pipeline
uses a capability only when it is claimed (:func:`has_capability`), never by probing for attributes.
The ones there are (:data:`CAPABILITIES`):

- tts ``"position_window"`` (:class:`PositionWindow`): ``max_positions``, the speaker's position window
  (prompt + frames to generate), and ``count_text_tokens(text)``, what a text costs in the prompt. The
  context policy fits the context in that window with that count; without it the policy assumes 2048
  positions and an upper bound of the text tokens.
- tts ``"batch"`` (:class:`BatchSpeaker`): ``speak_batch(requests)``, several requests in one batch;
  ``speak_many`` uses it when ``generation.max_batch`` is set.

:func:`check_stage` checks a stage object when the pipeline builds it: every member of its protocol,
and every member of each capability it claims, must be there; else :class:`StageContractError` names
the stage, the implementation and what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from csm_core.audio import Audio
from csm_core.errors import CsmError


@dataclass(frozen=True)
class Segment:
    """One utterance of the conversation as CSM context: who spoke, what, and its audio codes."""

    speaker: int
    text: str
    codes: np.ndarray | None = None  # [K, F] Mimi codes, when the utterance has audio

    def __post_init__(self) -> None:
        speaker = self.speaker
        if isinstance(speaker, bool) or not isinstance(speaker, (int, np.integer)) or speaker < 0:
            raise ValueError(f"Segment.speaker={speaker!r}: must be an integer >= 0")
        if self.codes is not None:
            codes = np.asarray(self.codes)  # a numpy array, a CPU tensor or nested lists
            if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
                raise ValueError(f"Segment.codes: must be integer codes [K,F], got {codes.dtype} {codes.shape}")
            object.__setattr__(self, "codes", codes.astype(np.int64, copy=False))

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


# -- optional capabilities ---------------------------------------------------------------------------
POSITION_WINDOW = "position_window"
BATCH = "batch"


@runtime_checkable
class PositionWindow(Protocol):
    """A tts stage's ``"position_window"`` capability: the window the context and the utterance share."""

    max_positions: int  # positions of the prompt plus the frames to generate (2048 for CSM-1B)

    def count_text_tokens(self, text: str) -> int:
        """Positions ``text`` (a whole ``[speaker]text`` segment text, BOS/EOS included) takes in the prompt."""


@runtime_checkable
class BatchSpeaker(Speaker, Protocol):
    """A tts stage's ``"batch"`` capability: several requests generated together."""

    def speak_batch(self, requests: Sequence[SpeechRequest]) -> Iterator[tuple[int, SpeechChunk]]:
        """Speak ``requests`` in one batch; yields ``(row, chunk)`` (``row`` indexes ``requests``) as frames
        are made, each step one chunk per row still speaking, in row order. Each request keeps its own
        :class:`SpeechParams` (and seed). A backend that cannot run that many rows raises :class:`CsmError`
        saying so."""


STAGE_PROTOCOLS: dict[str, type] = {
    "tokenizer": Tokenizer,
    "transcriber": Transcriber,
    "sentiment": SentimentAnalyzer,
    "llm": ReplyModel,
    "tts": Speaker,
}
"""The protocol a stage object of each kind follows."""

CAPABILITIES: dict[str, dict[str, type]] = {
    "tts": {POSITION_WINDOW: PositionWindow, BATCH: BatchSpeaker},
}
"""Stage kind -> the optional capabilities its objects may claim -> the protocol each adds."""


class StageContractError(CsmError):
    """A stage object lacks a member its protocol requires or a capability it claims needs."""


def _members(protocol: type) -> list[tuple[str, bool]]:
    """(name, is a method) of every member ``protocol`` declares, its bases' included, in order."""
    members: dict[str, bool] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        for name in vars(cls).get("__annotations__", {}):
            members.setdefault(name, False)
        for name, value in vars(cls).items():
            if not name.startswith("_") and callable(value):
                members[name] = True
    return list(members.items())


def _missing(stage: object, protocol: type) -> list[str]:
    missing = []
    for name, method in _members(protocol):
        if not hasattr(stage, name):
            missing.append(f"{name}()" if method else name)
        elif method and not callable(getattr(stage, name)):
            missing.append(f"{name}() (it is not callable)")
    return missing


def capabilities(stage: object) -> frozenset[str]:
    """The optional capabilities ``stage`` claims (its ``capabilities`` attribute; none when absent)."""
    claimed = getattr(stage, "capabilities", None)
    return frozenset() if claimed is None else frozenset(claimed)


def has_capability(stage: object, name: str) -> bool:
    """Whether ``stage`` claims capability ``name`` (:func:`check_stage` made sure it has its members)."""
    return name in capabilities(stage)


def position_window(stage: object) -> PositionWindow | None:
    """``stage`` as a :class:`PositionWindow` when it claims ``"position_window"``, else None."""
    return stage if has_capability(stage, POSITION_WINDOW) else None  # type: ignore[return-value]


def check_stage(kind: str, implementation: str, stage: object) -> None:
    """Raise :class:`StageContractError` unless ``stage`` (built by ``implementation`` for ``kind``) has every
    member of its protocol and of each capability it claims, and claims only capabilities there are."""
    where = f"the {kind} stage {implementation!r} ({type(stage).__name__})"
    protocol = STAGE_PROTOCOLS.get(kind)
    if protocol is None:
        raise StageContractError(f"{where}: unknown stage kind {kind!r}; kinds: {', '.join(STAGE_PROTOCOLS)}")
    claimed = getattr(stage, "capabilities", None)
    if claimed is not None and (isinstance(claimed, str) or not all(isinstance(c, str) for c in claimed)):
        raise StageContractError(
            f"{where}: capabilities must be a set of capability names, got {claimed!r}"
        )
    problems = []
    missing = _missing(stage, protocol)
    if missing:
        problems.append(f"lacks {', '.join(missing)}, which every {kind} stage has ({protocol.__name__})")
    known = CAPABILITIES.get(kind, {})
    for name in sorted(capabilities(stage)):
        if name not in known:
            choices = ", ".join(sorted(known)) or "none"
            problems.append(f"claims the unknown capability {name!r} (the {kind} capabilities: {choices})")
            continue
        missing = _missing(stage, known[name])
        if missing:
            problems.append(f"claims the {name!r} capability but lacks {', '.join(missing)}")
    if problems:
        raise StageContractError(f"{where} " + "; ".join(problems))
