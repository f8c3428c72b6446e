"""One turn of ``csmctl chat``: a conversation kept across invocations in a state file.

:func:`chat_turn` loads the state file (or starts a new conversation when it does not exist), runs one
:meth:`csm_core.pipeline.Pipeline.turn` with the pipeline's conversation taken from it — so every turn
adds the user's segment and the reply's segment to the context of the next — and saves the state
atomically. The voice profile is remembered by reference (path, sha256, transcript): a later turn that
configures no ``[voice]`` uses the conversation's; one that configures another voice switches to it and
says so; a clip that changed on disk since the conversation started is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from csm_core.audio import Audio
from csm_core.config import Settings, apply_overrides
from csm_core.conversation import Conversation
from csm_core.errors import CsmError
from csm_core.files import file_sha256
from csm_core.voice_profile import VoiceReference

if TYPE_CHECKING:
    from csm_core.pipeline import Pipeline, Turn
    from csm_core.plugins import Plugins


@dataclass(frozen=True)
class ChatTurn:
    """What one chat turn did: the pipeline's ``turn``, the ``conversation`` saved to ``state_path``
    (``turns`` counts this one), and whether the state file was ``created`` by it."""

    turn: "Turn"
    conversation: Conversation
    state_path: Path
    created: bool


def load_state(state_path: str | Path) -> tuple[Conversation, bool]:
    """(the conversation in ``state_path``, False), or (a new one, True) when the file does not exist."""
    path = Path(state_path)
    if not path.exists():
        if not path.parent.is_dir():
            raise CsmError(f"cannot keep chat state in {str(path)!r}: directory {str(path.parent)!r} does not exist")
        return Conversation(), True
    return Conversation.load(path), False


def _resolve_voice(settings: Settings, conversation: Conversation) -> tuple[Settings, list[str]]:
    """Settings with the conversation's voice when none is configured, and events about the voice."""
    events: list[str] = []
    if settings.voice.audio is not None:
        reference = VoiceReference.of(settings.voice)
        if conversation.voice is not None and conversation.voice != reference:
            events.append(
                f"chat: voice profile changed from {str(conversation.voice.path)!r} to {str(reference.path)!r}"
            )
        conversation.voice = reference
        return settings, events
    if conversation.voice is None:
        return settings, events
    stored = conversation.voice
    if not stored.path.is_file():
        raise CsmError(
            f"the conversation's voice clip {str(stored.path)!r} no longer exists: restore it, or configure "
            "another one in the [voice] table"
        )
    current = file_sha256(stored.path)
    if current != stored.sha256:
        raise CsmError(
            f"the conversation's voice clip {str(stored.path)!r} changed since the conversation started "
            f"(sha256 {stored.sha256[:12]}... -> {current[:12]}...): restore it, or configure it "
            "again in the [voice] table to switch to the new clip"
        )
    overrides = {"voice.audio": str(stored.path), "voice.text": stored.text, "voice.speaker": stored.speaker}
    return apply_overrides(settings, overrides, f"chat state voice {str(stored.path)!r}"), events


def chat_turn(
    state_path: str | Path,
    settings: Settings,
    *,
    audio: Audio | None = None,
    text: str | None = None,
    plugins: "Plugins | None" = None,
    on_audio: Callable[[np.ndarray], None] | None = None,
) -> ChatTurn:
    """Run one turn (the user's ``audio`` or ``text``) of the conversation kept in ``state_path``.

    The state file is created on the first turn and rewritten atomically after each; when the turn
    fails, the file is left as it was.
    """
    from csm_core.pipeline import Pipeline  # heavy stages load on first use; keep this module light

    if (audio is None) == (text is None):
        raise CsmError("a chat turn takes either audio or text, not both and not neither")
    path = Path(state_path)
    conversation, created = load_state(path)
    settings, events = _resolve_voice(settings, conversation)
    with Pipeline(settings, plugins=plugins, conversation=conversation) as pipeline:
        turn = pipeline.turn(audio=audio, text=text, on_audio=on_audio)
    turn.metrics.events.extend(events)
    conversation.turns += 1
    conversation.save(path)
    return ChatTurn(turn, conversation, path, created)

