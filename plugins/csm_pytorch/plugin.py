"""Hooks of the in-tree PyTorch plugin: the ``pytorch`` backend (eager engines for csm, codec, causal_lm, speech_to_text).

Nothing here imports torch: the factories import the modules that do when a pipeline builds them.
"""

from __future__ import annotations

import importlib.util

from pydantic import BaseModel, ConfigDict, Field

from csm_core import hookimpl
from csm_core.config import plugin_options
from csm_core.errors import BackendUnavailable
from csm_core.records import Backend


class PytorchOptions(BaseModel):
    """``[options.pytorch]``: how the PyTorch backend runs its engines."""

    model_config = ConfigDict(extra="forbid")

    cuda_graphs: bool = Field(
        False, description="capture the backbone step and depth-decoder steps as CUDA graphs (CUDA devices only)"
    )


def check_torch() -> None:
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailable(
            f"the pytorch backend needs {' and '.join(missing)}: pip install 'csm-multi[torch]'"
        )


def _csm_engines(model, context):
    options = plugin_options(context.settings, "pytorch", PytorchOptions)
    if context.settings.weight_quantization:  # Settings.weight_quantization: quantized linear layers, in place
        from csm_pytorch.quantization import apply_weight_quantization

        apply_weight_quantization(model, context.settings, context.log.info)
    if options.cuda_graphs:
        from csm_pytorch.cuda_graphs import cuda_graph_engines

        return cuda_graph_engines(model, capture=True)
    from csm_pytorch.engines import TorchCsmEngines

    return TorchCsmEngines(model)


def _codec_engine(model, context):
    from csm_model.mimi import TorchMimi
    from csm_model.sources import check_codec_precision

    check_codec_precision(context.settings, "pytorch")

    return TorchMimi(model)


def _causal_lm_engine(component, context):
    from csm_pytorch.causal_lm import TorchCausalLm

    return TorchCausalLm(component)


def _speech_to_text_engine(component, context):
    from csm_pytorch.speech_to_text import TorchSpeechToText

    return TorchSpeechToText(component)


@hookimpl
def register_backends(register):
    register(
        Backend(
            name="pytorch",
            engines={"csm": _csm_engines, "codec": _codec_engine, "causal_lm": _causal_lm_engine,
                     "speech_to_text": _speech_to_text_engine},
            check=check_torch,
            description="eager PyTorch with static KV caches",
            devices=("cpu", "cuda"),
        )
    )
