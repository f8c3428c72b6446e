"""The ``selective-precision`` optimizer: CSM transformer layers in bf16/fp16, everything audible in fp32.

``configure()`` sets the precision plan ``component_precision.backbone`` and ``.decoder`` to the
``[options.selective-precision] dtype`` (``bf16`` default, or ``fp16``). The backends carry it out: the
PyTorch backend casts the backbone's and depth decoder's transformer layers (and their KV caches) and
keeps the embeddings, ``codebook0_head``, ``projection``, ``audio_head`` (logits), sampling and Mimi in
float32 (:meth:`csm_model.model.Csm.set_part_dtypes`); ONNX Runtime writes the same plan into the
backbone/decoder graphs (:mod:`csm_export.precision`: reduced initializers and KV caches; norms,
softmax and logits kept float32). A dtype the device cannot run (bf16 on CUDA below compute capability
8.0) is an error unless ``allow_fallback``.

Effect: **approximate**. Bounds, measured against the float32 run on the same random weights and a
12-frame text prompt, greedy, 4 (tiny) / 2 (small) generated frames, CPU (``tests/optimizers_plugin/test_selective_precision.py``):

======================================  =========================  ==========================
measure                                 bf16 bound (tiny / small)  fp16 bound (tiny / small)
======================================  =========================  ==========================
codebook-0 logits, relative L2 error    <= 2e-2 (4.8e-3 / 1.2e-2)  <= 3e-3 (5.5e-4 / 1.3e-3)
teacher-forced greedy agreement         >= 0.90 (0.99 / 0.98)      >= 0.98 (1.00 / 1.00)
free-running greedy code agreement      none (0.34 / 0.66)         1.0 on tiny (1.00 / 1.00)
decoded audio SNR / LSD                 none (different speech)    inf dB / 0 dB on tiny
======================================  =========================  ==========================

*Teacher-forced* agreement predicts every code from the *reference* history (:func:`teacher_forced_agreement`),
so one flipped near-tie costs one code. *Free-running* greedy decoding feeds each prediction back: with
random weights the logits are nearly flat, the first flipped near-tie changes the whole continuation,
and the decoded audio is a different utterance (SNR ~0 dB), so for bf16 no code-agreement, SNR or LSD
bound is meaningful on random weights. Real weights give peaked distributions where far fewer ties
flip; measure them with :func:`csm_core.quality.compare_runs` before relying on a bound there. ONNX
Runtime's fp16 graphs (CPU provider) measured a logits error of 3e-4 and teacher-forced agreement 1.0
on tiny (``tests/onnxruntime_plugin/test_precision.py``).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from csm_core.config import plugin_options
from csm_core.records import Optimizer, StageContext

NAME = "selective-precision"


class SelectivePrecisionOptions(BaseModel):
    """``[options.selective-precision]``."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["bf16", "fp16"] = Field("bf16", description="dtype of the CSM transformer layers")


class SelectivePrecision:
    """Sets the precision plan of the CSM transformer parts; the backends apply it."""

    def __init__(self, context: StageContext) -> None:
        self.options = plugin_options(context.settings, NAME, SelectivePrecisionOptions)

    def configure(self, settings) -> Mapping[str, Any]:
        return {
            "component_precision.backbone": self.options.dtype,
            "component_precision.decoder": self.options.dtype,
        }


def teacher_forced_agreement(engines, embedder, prompt, reference, code_limit: int | None = None) -> float:
    """The fraction of ``reference`` codes [1,K,F] that greedy decoding with ``engines`` predicts when fed
    the *reference* history (prompt, then the reference frames), not its own earlier predictions.

    One flipped near-tie then costs one code, not the whole continuation: the measure of the bound this
    optimizer states. ``embedder`` is a :class:`csm_core.generation.embedder.FrameEmbedder`, ``prompt``
    (tokens [1,T,K+1], mask [1,T,K+1]). ``code_limit``: only codes below it are predicted (as
    :class:`~csm_core.generation.sampling.SamplingParams` ``code_limit`` does for the reference run).
    Each frame is decoded by the core's :func:`~csm_core.generation.frames.decode_frame`, teacher-forced
    with the reference frame.
    """
    import torch

    from csm_core.generation.frames import decode_frame
    from csm_core.generation.sampling import SamplingParams

    greedy = SamplingParams(temperature=0.0, code_limit=code_limit)
    tokens, mask = prompt
    t, k, frames = tokens.shape[1], reference.shape[1], reference.shape[2]
    device = embedder.device
    reference = reference.to(device)
    hits = 0
    with torch.inference_mode():
        engines.backbone.reset()
        positions = torch.arange(t, device=device)[None]
        hidden, logits = engines.backbone.prefill(embedder.embed_frames(tokens.to(device), mask.to(device)), positions)
        for f in range(frames):
            frame = reference[:, :, f]  # [1, K]
            predicted = decode_frame(engines, embedder, hidden, logits, greedy, None, forced=frame)
            hits += int((predicted == frame).sum().item())
            hidden, logits = engines.backbone.step(embedder.embed_codes(frame), torch.full((1, 1), t + f, device=device))
    return hits / (k * frames)


OPTIMIZER = Optimizer(
    name=NAME,
    factory=SelectivePrecision,
    effect="approximate",
    description="CSM backbone/decoder layers in bf16 (or fp16); embeddings, logits, sampling and Mimi fp32. "
    "Bound: codebook-0 logits rel. error <= 2e-2 (bf16) / 3e-3 (fp16); teacher-forced greedy agreement "
    ">= 0.90 (bf16) / 0.98 (fp16)",
)
