"""OpenAI's free-text ``instructions`` mapped to an emotion of the config's emotion map.

CSM takes no prose about delivery; what it can honour is an emotion, which the emotion map turns into
sampling parameters (:func:`csm_core.emotion.speech_params`). :func:`emotion_for` finds the emotions
the instructions name — the emotion's name as a word, or a word that begins with its stem: "calmly",
"happily", "sadness" — and returns an :class:`InstructionsUse`:

- no instructions: no emotion (the generation settings), no note;
- one emotion named: that emotion;
- several named: the first one mentioned, and a note that says the others were not used;
- none named: no emotion, and a note that says the instructions could not be mapped and which
  emotions can be.

The note travels back to the client in the ``X-Instructions-Note`` response header (and in logs), so
instructions are never ignored silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class InstructionsUse:
    """The ``emotion`` chosen (None: the generation settings) and a ``note`` for the client, if any."""

    emotion: str | None
    note: str | None = None


def _stem(emotion: str) -> str:
    stem = emotion.lower()
    if stem.endswith("y") and len(stem) > 3:  # happy -> happ (happily, happiness), angry -> angr
        stem = stem[:-1]
    return stem


def named_emotions(instructions: str, emotions: Iterable[str]) -> list[str]:
    """The emotions named in ``instructions``, in the order they are first mentioned."""
    stems = {emotion: _stem(emotion) for emotion in emotions}
    found: list[str] = []
    for word in _WORD.findall(instructions.lower()):
        for emotion, stem in stems.items():
            if emotion not in found and (word == emotion.lower() or (len(stem) >= 3 and word.startswith(stem))):
                found.append(emotion)
    return found


def emotion_for(instructions: str | None, emotions: Iterable[str]) -> InstructionsUse:
    """See the module docstring."""
    if instructions is None or not instructions.strip():
        return InstructionsUse(None)
    known = sorted(emotions)
    found = named_emotions(instructions, known)
    if not found:
        return InstructionsUse(
            None,
            "instructions name no emotion of the emotion map, so they were not applied; "
            f"name one of: {', '.join(known)}",
        )
    if len(found) > 1:
        return InstructionsUse(found[0], f"instructions name several emotions ({', '.join(found)}); used {found[0]}")
    return InstructionsUse(found[0])
