"""The ``cuda-graphs`` optimizer: replay the PyTorch backend's fixed-shape CSM steps as CUDA graphs.

Effect: **exact**. A captured graph replays the same kernels on the same inputs as the eager step, so
greedy codes are identical to the unoptimized run (``code_agreement == 1.0``); only kernel-launch
overhead goes away. The prefill stays eager. The work lives with the engines
(:mod:`csm_pytorch.cuda_graphs`); this optimizer switches it on with ``options.pytorch.cuda_graphs =
true``. It needs the ``tts`` stage on the ``pytorch`` backend and a CUDA device: anything else is an
error before any model loads (TensorRT has its own ``options.tensorrt.cuda_graphs``).
"""

from __future__ import annotations

from typing import Any, Mapping

from csm_core.errors import CsmError
from csm_core.records import Optimizer, StageContext


class CudaGraphs:
    """Asks the PyTorch backend to capture its CSM steps; checks the device and backend first."""

    def __init__(self, context: StageContext) -> None:
        self.context = context

    def configure(self, settings) -> Mapping[str, Any]:
        from csm_core.devices import resolve_device

        backend = settings.backend_for("tts")
        if backend != "pytorch":
            raise CsmError(
                f"the cuda-graphs optimizer acts on the pytorch backend, but the tts stage runs on {backend!r}: "
                "use backend = \"pytorch\", or for tensorrt set options.tensorrt.cuda_graphs = true instead"
            )
        device = resolve_device(settings.device, settings.allow_fallback, self.context.report)
        if not device.startswith("cuda"):
            raise CsmError(
                f"the cuda-graphs optimizer needs a CUDA device, but device = {settings.device!r} resolved to "
                f"{device!r}: run on a machine with an NVIDIA GPU (device = \"cuda\"), or remove cuda-graphs "
                "from optimizers"
            )
        return {"options.pytorch.cuda_graphs": True}


OPTIMIZER = Optimizer(
    name="cuda-graphs",
    factory=CudaGraphs,
    effect="exact",
    description="PyTorch backend on CUDA: backbone and depth-decoder steps replayed as CUDA graphs "
    "(prefill eager); identical codes",
)
