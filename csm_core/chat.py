"""One turn of ``csmctl chat``: a conversation kept across invocations in a state file.

:func:`chat_turn` loads the state file (or starts a new conversation when it does not exist), runs one
:meth:`csm_core.pipeline.Pipeline.turn` with the pipeline's conversation taken from it — so every turn
adds the user's segment and the reply's segment to the context of the next — then writes the reply
audio and the state. The voice profile is remembered by reference (path, sha256, transcript): a later
turn that configures no ``[voice]`` uses the conversation's; one that configures another voice switches
to it and says so; a clip that changed on disk since the conversation started is an error.

Checked before any model loads: every value of the state file (:mod:`csm_core.conversation_schema`),
the output paths (existing folders, not directories, not the same file), and the voice clip's header
(:func:`csm_core.audio_header.check_audio_file`). Checked once the models are loaded, before anything
is generated: the state's codes against the tts stage's codec (its ``codec.num_codebooks`` and
``codec.codebook_size``, where the stage exposes them).

Writes, each atomic (:func:`csm_core.files.write_atomic`), in this order: the reply audio, then the
state. A failed audio write leaves the state as it was; a failed state write puts the audio file back
as it was (its old bytes, or no file). So a turn that fails changes neither file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from csm_core.audio import Audio, write_wav
from csm_core.audio_header import check_audio_file
from csm_core.config import Settings, apply_overrides
from csm_core.conversation import Conversation
from csm_core.errors import CsmError
from csm_core.files import file_sha256, write_atomic
from csm_core.voice_profile import VoiceReference

if TYPE_CHECKING:
    from csm_core.pipeline import Pipeline, Turn
    from csm_core.plugins import Plugins


@dataclass(frozen=True)
class ChatTurn:
    """What one chat turn did: the pipeline's ``turn``, the ``conversation`` saved to ``state_path``
    (``turns`` counts this one), whether the state file was ``created`` by it, and the ``output`` the
    reply audio was written to (None: not written)."""

    turn: "Turn"
    conversation: Conversation
    state_path: Path
    created: bool
    output: Path | None = None


def load_state(state_path: str | Path) -> tuple[Conversation, bool]:
    """(the conversation in ``state_path``, False), or (a new one, True) when the file does not exist."""
    path = Path(state_path)
    if path.is_dir():
        raise CsmError(f"cannot keep chat state in {str(path)!r}: it is a directory; give a file such as chat.json")
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
        check_audio_file(reference.path, f"voice.audio {str(reference.path)!r}")
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
    check_audio_file(stored.path, f"the conversation's voice clip {str(stored.path)!r}")
    overrides = {"voice.audio": str(stored.path), "voice.text": stored.text, "voice.speaker": stored.speaker}
    return apply_overrides(settings, overrides, f"chat state voice {str(stored.path)!r}"), events


def check_output(output: Path, state_path: Path) -> None:
    """CsmError unless the reply audio can be written to ``output``: its folder exists, it is not a
    directory, and it is not the state file."""
    if not output.parent.is_dir():
        raise CsmError(f"cannot write the reply to {str(output)!r}: directory {str(output.parent)!r} does not exist")
    if output.is_dir():
        raise CsmError(f"cannot write the reply to {str(output)!r}: it is a directory; give a file name such as reply.wav")
    if output.resolve() == state_path.resolve():
        raise CsmError(
            f"the reply audio and the chat state would both be written to {str(output)!r}: give --output "
            "and --state different files"
        )


def _check_codes(pipeline: "Pipeline", conversation: Conversation, where: str) -> None:
    """The conversation's codes against the tts stage's codec, when it exposes one (loads the stage)."""
    if all(segment.codes is None for segment in conversation.segments):
        return
    codec = getattr(pipeline.stage("tts"), "codec", None)
    num_codebooks, size = getattr(codec, "num_codebooks", None), getattr(codec, "codebook_size", None)
    if isinstance(num_codebooks, int) and isinstance(size, int):
        conversation.check_codes_fit(num_codebooks, size, where)


def _commit(state_path: Path, conversation: Conversation, output: Path | None, audio: Audio) -> None:
    """Write the reply audio, then the state; a failed state write puts the audio file back."""
    previous = output.read_bytes() if output is not None and output.is_file() else None
    if output is not None:
        write_wav(output, audio)
    try:
        conversation.save(state_path)
    except BaseException as exc:
        if output is not None:
            if previous is None:
                output.unlink(missing_ok=True)
            else:
                write_atomic(output, previous)
        if isinstance(exc, OSError):
            kept = f"; {str(output)!r} was put back as it was" if output is not None else ""
            raise CsmError(
                f"cannot write the chat state file {str(state_path)!r} ({exc.strerror or exc}){kept}: "
                "make its folder writable and run the turn again"
            ) from None
        raise


def chat_turn(
    state_path: str | Path,
    settings: Settings,
    *,
    audio: Audio | None = None,
    text: str | None = None,
    output: str | Path | None = None,
    plugins: "Plugins | None" = None,
    on_audio: Callable[[np.ndarray], None] | None = None,
) -> ChatTurn:
    """Run one turn (the user's ``audio`` or ``text``) of the conversation kept in ``state_path``, and
    write the reply audio to ``output`` (None: do not write it).

    See the module docstring for what is checked when, and for the order of the writes: the state file
    is created on the first turn and rewritten after each; when the turn fails, neither the state file
    nor ``output`` is changed.
    """
    from csm_core.pipeline import AUDIO_STAGES, TEXT_STAGES, Pipeline  # heavy stages load on first use

    if (audio is None) == (text is None):
        raise CsmError("a chat turn takes either audio or text, not both and not neither")
    path = Path(state_path)
    output = None if output is None else Path(output)
    if output is not None:
        check_output(output, path)
    conversation, created = load_state(path)
    settings, events = _resolve_voice(settings, conversation)
    with Pipeline(settings, plugins=plugins, conversation=conversation) as pipeline:
        pipeline.preload(AUDIO_STAGES if audio is not None else TEXT_STAGES)
        _check_codes(pipeline, conversation, f"conversation file {str(path)!r}")
        turn = pipeline.turn(audio=audio, text=text, on_audio=on_audio)
    turn.metrics.events.extend(events)
    conversation.turns += 1
    _commit(path, conversation, output, turn.audio)
    return ChatTurn(turn, conversation, path, created, output)
