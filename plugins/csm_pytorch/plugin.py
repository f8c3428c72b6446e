"""Hooks of the in-tree PyTorch plugin: the ``pytorch`` backend, the ``csm`` TTS and ``mimi`` tokenizer.

Nothing here imports torch: the factories import the modules that do when a pipeline builds them.
"""

from __future__ import annotations

import importlib.util

from csm_core import hookimpl
from csm_core.errors import BackendUnavailable
from csm_core.records import Backend, StageImpl


def check_torch() -> None:
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailable(
            f"the pytorch backend needs {' and '.join(missing)}: pip install 'csm-multi[torch]'"
        )


def _csm_engines(model, context):
    from csm_pytorch.model import TorchCsmEngines

    return TorchCsmEngines(model)


def _codec_engine(model, context):
    from csm_pytorch.mimi import TorchMimi

    return TorchMimi(model)


def _csm_speaker(context):
    from csm_pytorch.tts_stage import CsmSpeaker

    return CsmSpeaker(context)


def _mimi_tokenizer(context):
    from csm_pytorch.tokenizer_stage import MimiTokenizer

    return MimiTokenizer(context)


@hookimpl
def register_backends(register):
    register(
        Backend(
            name="pytorch",
            engines={"csm": _csm_engines, "codec": _codec_engine},
            check=check_torch,
            description="eager PyTorch with static KV caches",
            devices=("cpu", "cuda"),
        )
    )


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
