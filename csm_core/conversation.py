"""Conversation state: the earlier turns (CSM context), the voice profile's reference and the turn count,
saved to / loaded from a JSON state file.

The file (format ``csm-multi-conversation``, version :data:`FORMAT_VERSION`) holds each segment's
speaker, text and Mimi codes [K, F]; the voice profile as a reference (clip path, sha256 of its bytes,
transcript, speaker id), never the audio; and how many turns were taken. Saving is atomic (an
interrupted save leaves the previous file intact). Loading checks every value
(:mod:`csm_core.conversation_schema`): a file of another version, or a malformed one, raises
:class:`csm_core.errors.CsmError` naming the file, the field path (``segments[2].speaker``) and the
value. Saving refuses a segment whose text is not a string, so null never comes back as "None".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csm_core.conversation_schema import check_codes_fit, parse_state
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
        """Write atomically: an interrupted save never leaves a half-written file behind. What is written
        is checked by the rules of :meth:`load` first, so a file this writes always loads again."""
        payload = self.to_dict()
        parse_state(payload, f"conversation to save in {str(path)!r}", FORMAT, FORMAT_VERSION,
                    fix="a stage made a segment this format cannot hold: report it (nothing was written)")
        return write_atomic(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str | Path) -> "Conversation":
        """The conversation in the state file ``path``; every value is checked (see
        :mod:`csm_core.conversation_schema`), and CsmError names the file, the field and the value."""
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
        except RecursionError:
            raise CsmError(f"{where} is nested too deeply to be a conversation file: delete it to start a new one") from None
        return cls.from_dict(payload, where)

    @classmethod
    def from_dict(cls, payload: dict, where: str = "conversation") -> "Conversation":
        """The conversation of a state ``payload`` (version 2, or 1: segments only, no voice, the turns
        counted from them); CsmError naming ``where``, the field path and the value otherwise."""
        state = parse_state(payload, where, FORMAT, FORMAT_VERSION)
        voice = None if state.voice is None else VoiceReference.from_dict(state.voice)
        segments = [Segment(item.speaker, item.text, item.codes) for item in state.segments]
        return cls(segments, voice, state.turns)

    def check_codes_fit(self, num_codebooks: int, codebook_size: int, where: str = "conversation") -> None:
        """CsmError unless every segment's codes are [num_codebooks, F] with codes below
        ``codebook_size``: check it once the codec is known, before speaking after this conversation."""
        check_codes_fit(self.segments, num_codebooks, codebook_size, where)

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
