"""Conversation state: the earlier turns, kept as CSM context and saved to / loaded from JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from csm_core.files import write_atomic
from csm_core.errors import CsmError
from csm_core.stages import Segment

FORMAT_VERSION = 1


@dataclass
class Conversation:
    """The turns so far, oldest first, each a :class:`Segment` (speaker, text, Mimi codes)."""

    segments: list[Segment] = field(default_factory=list)

    def add(self, segment: Segment) -> None:
        self.segments.append(segment)

    def save(self, path: str | Path) -> Path:
        """Write atomically: an interrupted save never leaves a half-written file behind."""
        payload = {"format": "csm-multi-conversation", "version": FORMAT_VERSION,
                   "segments": [segment.to_dict() for segment in self.segments]}
        return write_atomic(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str | Path) -> "Conversation":
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CsmError(f"conversation file {str(path)!r} does not exist") from None
        except ValueError as exc:
            raise CsmError(f"conversation file {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != "csm-multi-conversation":
            raise CsmError(f"{str(path)!r} is not a csm-multi conversation file")
        if payload.get("version") != FORMAT_VERSION:
            raise CsmError(
                f"conversation file {str(path)!r} has version {payload.get('version')!r}; "
                f"this csm-multi reads version {FORMAT_VERSION}"
            )
        try:
            return cls([Segment.from_dict(item) for item in payload["segments"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise CsmError(f"conversation file {str(path)!r} has a malformed segment: {exc}") from None
