"""Conversation state: the earlier turns (CSM context), the voice profile's reference and the turn count,
saved to / loaded from a JSON state file.

The file (format ``csm-multi-conversation``, version :data:`FORMAT_VERSION`) holds each segment's
speaker, text and Mimi codes [K, F]; the voice profile as a reference (clip path, sha256 of its bytes,
transcript, speaker id), never the audio; and how many turns were taken. Saving is atomic (an
interrupted save leaves the previous file intact); a file of another version, or a malformed one,
raises :class:`csm_core.errors.CsmError` saying which file and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csm_core.errors import CsmError
from csm_core.files import write_atomic
from csm_core.stages import Segment
from csm_core.voice_profile import VoiceReference

FORMAT = "csm-multi-conversation"
FORMAT_VERSION = 2


@dataclass
class Conversation:
    """The turns so far, oldest first, each a :class:`Segment` (speaker, text, Mimi codes [K, F]);
    the ``voice`` profile the conversation is spoken with, and the number of ``turns`` taken."""

    segments: list[Segment] = field(default_factory=list)
    voice: VoiceReference | None = None
    turns: int = 0

    def add(self, segment: Segment) -> None:
        self.segments.append(segment)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "turns": self.turns,
            "voice": None if self.voice is None else self.voice.to_dict(),
            "segments": [segment.to_dict() for segment in self.segments],
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically: an interrupted save never leaves a half-written file behind."""
        return write_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Conversation":
        path = Path(path)
        where = f"conversation file {str(path)!r}"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CsmError(f"{where} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CsmError(f"{where} cannot be read: {exc}") from None
        except ValueError as exc:
            raise CsmError(f"{where} is not valid JSON ({exc}): delete it to start a new conversation") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CsmError(f"{str(path)!r} is not a csm-multi conversation file (no \"format\": {FORMAT!r})")
        if payload.get("version") == 1:  # segments only: no voice, turns counted from the segments
            segments = payload.get("segments")
            turns = len(segments) // 2 if isinstance(segments, list) else 0
            payload = {**payload, "version": FORMAT_VERSION, "voice": None, "turns": turns}
        if payload.get("version") != FORMAT_VERSION:
            raise CsmError(
                f"{where} has version {payload.get('version')!r}; this csm-multi reads version "
                f"{FORMAT_VERSION}: use the csm-multi that wrote it, or start a new conversation"
            )
        return cls.from_dict(payload, where)

    @classmethod
    def from_dict(cls, payload: dict, where: str = "conversation") -> "Conversation":
        """The conversation of a state ``payload``; CsmError naming ``where`` and the bad field."""
        turns = payload.get("turns")
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 0:
            raise CsmError(f"{where} has turns={turns!r}: must be an integer >= 0")
        voice = payload.get("voice")
        try:
            voice = None if voice is None else VoiceReference.from_dict(voice)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CsmError(f"{where} has a malformed voice reference: {exc}") from None
        items = payload.get("segments")
        if not isinstance(items, list):
            raise CsmError(f"{where} has no list of segments (got {type(items).__name__})")
        segments = []
        for index, item in enumerate(items):
            try:
                segment = Segment.from_dict(item)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise CsmError(f"{where} has a malformed segment {index}: {exc!r}") from None
            if segment.codes is not None and (segment.codes.ndim != 2 or segment.codes.size == 0):
                raise CsmError(
                    f"{where} segment {index} has codes of shape {segment.codes.shape}: must be [K, F] with F >= 1"
                )
            segments.append(segment)
        return cls(segments, voice, turns)

    def same_codes(self, other: "Conversation") -> bool:
        """True when both hold the same segments (speaker, text and codes)."""
        if len(self.segments) != len(other.segments):
            return False
        for a, b in zip(self.segments, other.segments):
            if (a.speaker, a.text) != (b.speaker, b.text) or (a.codes is None) != (b.codes is None):
                return False
            if a.codes is not None and not np.array_equal(a.codes, b.codes):
                return False
        return True
