"""The ``fused-frame`` optimizer: a frame's depth decoding in one ONNX Runtime call instead of K-1.

What it changes: ``configure()`` sets ``options.onnxruntime.fused_frame = true``, and the onnxruntime
backend's ``csm`` engines get a ``frame_decoder`` (:mod:`csm_onnxruntime.frame_decoder`) over the frame
graph of :mod:`csm_export.frame_graph`: the depth decoder graph inlined K-1 times with its KV cache
inside the graph and the core's sampling (temperature, top-k, top-p, ``code_limit``, the exponential
race over the core's noise) as graph ops. The frame loop then makes one call per frame for codebooks
1..K-1 (31 on CSM) instead of 31 decoder calls with a torch sampling step after each.

Effect: **exact**. Greedy and seeded sampling give the step path's codes (tested on the ``tiny`` and
``small`` presets under greedy and several sampling settings, and against PyTorch under greedy): the graph
runs the step path's own decoder graph, and the core's noise, drawn in the core's order. ONNX Runtime's
``Softmax``/``CumSum`` round their last bits differently from torch's, so a code could differ only where
two codes' race ratios are within a few float32 ulps (none in 26,000 draws measured). Parameters the graph
cannot reproduce (a positive temperature below float32's smallest value) are decoded step by step, and
the turn's events say so.

It needs the ``tts`` stage on the ``onnxruntime`` backend; anything else is an error before any model
loads. (On ``pytorch`` a ``torch.compile`` frame step measured 208 s of compile time for one greedy frame
graph on this workplace's CPU: docs/optimizers.md.)
"""

from __future__ import annotations

from typing import Any, Mapping

from csm_core.records import Optimizer, StageContext
from csm_optimizers.tts_backend import require_tts_backend

NAME = "fused-frame"
BACKENDS = ("onnxruntime",)


class FusedFrame:
    """Switches the onnxruntime backend's fused frame graph on; checks the tts stage's backend first."""

    def __init__(self, context: StageContext) -> None:
        self.context = context

    def configure(self, settings) -> Mapping[str, Any]:
        require_tts_backend(settings, NAME, BACKENDS, "one graph per frame",
                            "; on pytorch with a CUDA device, cuda-graphs replays a greedy frame as one graph")
        from csm_onnxruntime import FUSED_FRAME_OPTION

        return {f"options.onnxruntime.{FUSED_FRAME_OPTION}": True}


OPTIMIZER = Optimizer(
    name=NAME,
    factory=FusedFrame,
    effect="exact",
    description="onnxruntime: a frame's depth decoding (K-1 decoder passes and the core's sampling over its noise) "
    "in one graph call; identical codes",
)
