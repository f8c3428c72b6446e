"""Hooks of the shared CSM model layer: the backend-neutral ``csm`` TTS stage and ``mimi`` tokenizer stage.

Both stages get their engines from the backend configured for them (``backends.tts`` /
``backends.tokenizer``); nothing here imports torch: the factories import the stage modules when a
pipeline builds them.
"""

from __future__ import annotations

from csm_core import hookimpl
from csm_core.records import StageImpl


def _csm_speaker(context):
    from csm_model.tts_stage import CsmSpeaker

    return CsmSpeaker(context)


def _mimi_tokenizer(context):
    from csm_model.tokenizer_stage import MimiTokenizer

    return MimiTokenizer(context)


@hookimpl
def register_tts(register):
    register(
        StageImpl(
            name="csm",
            factory=_csm_speaker,
            description="Sesame CSM: text + conversation context -> speech, streamed frame by frame",
            components=("csm", "codec"),
        )
    )


@hookimpl
def register_tokenizers(register):
    register(
        StageImpl(
            name="mimi",
            factory=_mimi_tokenizer,
            description="Kyutai Mimi: 24 kHz speech <-> 32 codebooks at 12.5 frames/s",
            components=("codec",),
        )
    )
