"""The ``weight-quantization`` optimizer: the CSM transformer linear layers with 8- or 4-bit weights.

``configure()`` sets the neutral setting ``weight_quantization.backbone`` and ``.decoder`` (for the parts
in ``[options.weight-quantization] parts``) to ``{bits, block_size}``; the backends carry it out:

- ``pytorch`` (CPU): :mod:`csm_pytorch.quantization` replaces the attention and MLP ``nn.Linear`` modules
  of the transformer layers: 8 bits with PyTorch's dynamic int8 linear (fbgemm, per-channel scales),
  4 bits with ``torch._weight_int4pack_mm_for_cpu`` (bf16 scales per block);
- ``onnxruntime``: :mod:`csm_export.quantization` writes ``MatMulNBits`` nodes (8 or 4 bits,
  symmetric, one scale per block, ``accuracy_level`` 4) into the backbone and decoder graphs; the plan
  is part of the graph cache key.

Embeddings, ``codebook0_head``, ``projection``, ``audio_head`` (logits), norms, sampling and Mimi keep
float32. It runs on the CPU with float32 parts only: the ``tensorrt`` backend, a CUDA device, or a part
in reduced precision (selective-precision) are errors that name what is supported.

Effect: **approximate**. Bounds, measured against the float32 run of the same backend on the same random
weights, a 12-frame text prompt, greedy, 4 (tiny) / 2 (small) generated frames, CPU, block 128
(``tests/optimizers_plugin/test_weight_quantization.py``; measured values in docs/optimizers.md):

====================================  ======================  ======================
measure (bound: tiny / small)         int8                    int4
====================================  ======================  ======================
codebook-0 logits, relative L2 error  <= 0.05 / 0.15          <= 0.15 / 0.60
teacher-forced greedy agreement       >= 0.93 / 0.85          >= 0.60 / 0.25
free-running codes, audio SNR / LSD   no bound                no bound
====================================  ======================  ======================

Random weights are the hard case: every layer's output is noise-like and as large as the residual, so
the quantization error of each layer (int8 ~1.5 %, int4 ~8-10 % of a layer's output, activations
included) adds up through the stack, and the logits are nearly flat, so near-ties flip. Free-running
greedy decoding then changes the continuation after the first flip and its audio is different speech,
so no code-agreement, SNR or LSD bound is stated. Measure real checkpoints with
:func:`csm_core.quality.compare_runs` before relying on int4.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from csm_core.config import plugin_options
from csm_core.errors import CsmError
from csm_core.records import Optimizer, StageContext
from csm_optimizers.tts_backend import require_tts_backend

NAME = "weight-quantization"
BACKENDS = ("pytorch", "onnxruntime")

# bits -> preset -> (max codebook-0 logits relative L2 error, min teacher-forced greedy agreement): the
# stated bound, on both backends (measured: docs/optimizers.md).
BOUNDS = {8: {"tiny": (0.05, 0.93), "small": (0.15, 0.85)}, 4: {"tiny": (0.15, 0.60), "small": (0.60, 0.25)}}


class WeightQuantizationOptions(BaseModel):
    """``[options.weight-quantization]``."""

    model_config = ConfigDict(extra="forbid")

    bits: Literal[8, 4] = Field(8, description="bits per stored weight of the transformer linear layers: 8 or 4")
    block_size: Literal[16, 32, 64, 128, 256] = Field(
        128, description="weights per scale along the input dimension (pytorch 4-bit: 32..256; pytorch 8-bit: per row)"
    )
    parts: list[Literal["backbone", "decoder"]] = Field(
        default_factory=lambda: ["backbone", "decoder"], min_length=1, description="CSM parts to quantize"
    )


class WeightQuantization:
    """Sets ``weight_quantization`` of the CSM transformer parts; the backends apply it."""

    def __init__(self, context: StageContext) -> None:
        self.context = context
        self.options = plugin_options(context.settings, NAME, WeightQuantizationOptions)

    def configure(self, settings) -> Mapping[str, Any]:
        from csm_core.devices import resolve_device

        require_tts_backend(settings, NAME, BACKENDS, "their own int8/int4 kernels")
        device = resolve_device(settings.device, settings.allow_fallback, self.context.report)
        if device != "cpu":
            raise CsmError(
                f"the {NAME} optimizer runs on the CPU ({', '.join(BACKENDS)}), but device = {settings.device!r} "
                f"resolved to {device!r}: set device = \"cpu\", or remove {NAME} from optimizers"
            )
        for part in self.options.parts:
            precision = settings.precision_of(part)
            if precision != "fp32":
                raise CsmError(
                    f"the {NAME} optimizer quantizes float32 parts, but component_precision of the CSM {part} is "
                    f"{precision}: set it to fp32 (selective-precision and {NAME} do not combine)"
                )
        value = {"bits": self.options.bits, "block_size": self.options.block_size}
        return {f"weight_quantization.{part}": dict(value) for part in self.options.parts}


OPTIMIZER = Optimizer(
    name=NAME,
    factory=WeightQuantization,
    effect="approximate",
    description="CSM backbone/decoder transformer linear layers with int8 or int4 weights (CPU; pytorch: fbgemm "
    "dynamic int8 / int4pack kernels, onnxruntime: MatMulNBits); embeddings, heads and Mimi fp32. Bound (random "
    "weights, tiny/small): codebook-0 logits rel. error <= 0.05/0.15 (int8), 0.15/0.60 (int4); teacher-forced greedy "
    "agreement >= 0.93/0.85 (int8), 0.60/0.25 (int4)",
)
