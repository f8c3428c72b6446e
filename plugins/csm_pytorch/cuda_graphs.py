"""CUDA graphs for the fixed-shape steps of the PyTorch CSM engines.

A decode step launches hundreds of small kernels; replaying them as one captured ``torch.cuda.CUDAGraph``
removes the per-kernel launch cost. Only calls whose shapes never change are captured:

- the backbone *step* (``embed`` [B,1,D], ``position`` [B,1]), once per generated frame;
- the depth decoder's two call shapes (T=2 on the first call of a frame, T=1 for the others).

- under greedy decoding, a whole frame's depth decoding (:class:`GraphedFrame`): codebook 0 sampled from
  the backbone's logits, then the K-1 decoder steps each followed by the core's own sampling, replayed
  as one graph instead of 31 (the core's :func:`~csm_core.generation.frames.decode_frame` is what is
  captured, so the codes are the step-by-step codes). Sampling with a generator stays per step.

The prefill (T varies with the prompt) stays eager. This works because :class:`csm_model.model.Csm`
keeps static KV caches written by position and attends over the whole cache under a gathered mask: a
step has no data-dependent shapes, and the caches live at fixed addresses.

:class:`StaticStep` holds the static input/output buffers: a call copies its inputs into them, runs (or
replays) the step, and returns clones of the outputs. With ``capture=False`` it runs the same buffers
eagerly (the CPU path, used to test the plumbing); with ``capture=True`` the first call warms up on a
side stream, captures, and every call (the first included) replays.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from csm_core.errors import CsmError
from csm_core.generation.embedder import FrameEmbedder
from csm_core.generation.frames import decode_frame
from csm_core.generation.sampling import SamplingParams
from csm_model.model import Csm
from csm_pytorch.engines import TorchBackbone, TorchCsmEngines, TorchDepthDecoder

__all__ = ["StaticStep", "GraphedBackbone", "GraphedDepthDecoder", "GraphedFrame", "GraphedCsmEngines",
           "cuda_graph_engines", "check_cuda_graph_device"]

WARMUP_ITERATIONS = 3


def check_cuda_graph_device(device: torch.device | str) -> None:
    """Raise :class:`CsmError` unless ``device`` is a usable CUDA device (CUDA graphs need one)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise CsmError(
            f"CUDA graphs need a CUDA device, but the CSM runs on {str(device)!r}: set device = \"cuda\" on a "
            "machine with an NVIDIA GPU, or remove the cuda-graphs optimizer (options.pytorch.cuda_graphs = false)"
        )
    if not torch.cuda.is_available():
        raise CsmError(f"CUDA graphs need CUDA, and torch {torch.__version__} sees no CUDA device")


class StaticStep:
    """``fn(*inputs) -> tuple of tensors`` over static input/output buffers, captured as a CUDA graph.

    ``example`` fixes the input shapes, dtypes and device. A call with other shapes is a ``ValueError``
    (the caller routes those to the eager path). Outputs are cloned: the next call overwrites the buffers.
    """

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], example: Sequence[torch.Tensor], capture: bool) -> None:
        self.fn = fn
        self.inputs = [t.detach().clone() for t in example]
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, ...] | None = None
        if capture:
            check_cuda_graph_device(self.inputs[0].device)

    def matches(self, *args: torch.Tensor) -> bool:
        """True when ``args`` have the static buffers' shapes, dtypes and device."""
        return len(args) == len(self.inputs) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device for a, b in zip(args, self.inputs)
        )

    def _record(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_ITERATIONS):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = tuple(self.fn(*self.inputs))

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.matches(*args):
            raise ValueError(
                f"StaticStep: inputs {[tuple(a.shape) for a in args]} do not match the static buffers "
                f"{[tuple(b.shape) for b in self.inputs]}"
            )
        for buffer, value in zip(self.inputs, args):
            buffer.copy_(value)
        if not self.capture:
            return tuple(out.clone() for out in self.fn(*self.inputs))
        if self.graph is None:
            # Warm-up runs write the KV cache at the buffers' positions: the same values the replay
            # below writes again, so the caches end as after one eager step.
            self._record()
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)


class GraphedBackbone(TorchBackbone):
    """:class:`~csm_core.components.BackboneEngine`: eager prefill, the T=1 step through a :class:`StaticStep`."""

    def __init__(self, model: Csm, capture: bool) -> None:
        super().__init__(model)
        self.capture = capture
        self._step: StaticStep | None = None

    @torch.inference_mode()
    def step(self, embed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if embed.shape[1] != 1:
            return self.model.backbone_logits(embed, position)
        if self._step is None or not self._step.matches(embed, position):
            self._step = StaticStep(self.model.backbone_logits, (embed, position), self.capture)
        hidden, logits = self._step(embed, position)
        return hidden, logits


class GraphedDepthDecoder:
    """:class:`~csm_core.components.DepthDecoderEngine` with one :class:`StaticStep` per call shape (T=2, T=1)."""

    def __init__(self, model: Csm, capture: bool) -> None:
        self.model = model
        self.capture = capture
        self._steps: dict[tuple, StaticStep] = {}

    def reset(self) -> None:
        self.model.decoder.reset_cache()

    def _logits(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.decoder_logits(x, positions),)

    @torch.inference_mode()
    def step(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, tuple(positions.shape), x.device)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = StaticStep(self._logits, (x, positions), self.capture)
        return step(x, positions)[0]


class GraphedFrame:
    """:class:`~csm_core.components.FrameEngine`: a greedy frame's depth decoding as one :class:`StaticStep`.

    The captured function is the core's :func:`~csm_core.generation.frames.decode_frame` over eager
    engines of the same model (so the same kernels in the same order), one graph per (batch shape,
    sampling parameters). Under sampling (``params.greedy`` false) :meth:`supports` is false and the
    frame loop uses the per-step graphs.
    """

    def __init__(self, model: Csm, capture: bool) -> None:
        self.model = model
        self.capture = capture
        self.embedder = FrameEmbedder.from_model(model)
        self._eager = _EagerDecoder(model)
        self._steps: dict[tuple, StaticStep] = {}

    def supports(self, params: SamplingParams) -> bool:
        return params.greedy

    @torch.inference_mode()
    def decode(self, hidden: torch.Tensor, c0_logits: torch.Tensor, params: SamplingParams,
               generator: torch.Generator | None = None) -> torch.Tensor:
        if not params.greedy:
            raise ValueError("GraphedFrame decodes greedy frames only: check supports(params) first")
        key = (tuple(hidden.shape), hidden.dtype, tuple(c0_logits.shape), params)
        step = self._steps.get(key)
        if step is None:
            def frame(h: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor]:
                return (decode_frame(self._eager, self.embedder, h, logits, params, None),)

            step = self._steps[key] = StaticStep(frame, (hidden, c0_logits), self.capture)
        return step(hidden, c0_logits)[0]


class _EagerDecoder:
    """The ``decoder`` that :func:`decode_frame` drives inside the captured frame (no backbone needed)."""

    def __init__(self, model: Csm) -> None:
        self.decoder = TorchDepthDecoder(model)


class GraphedCsmEngines(TorchCsmEngines):
    """:class:`TorchCsmEngines` whose steps run through :class:`StaticStep` (:func:`cuda_graph_engines`).

    A fixed batch: the captured graphs hold the addresses of the caches they were captured with, so
    :meth:`for_batch` never re-allocates them.
    """

    def __init__(self, model: Csm, batch_size: int = 1) -> None:
        super().__init__(model, batch_size)
        self._rows = batch_size

    @property
    def batch_size(self) -> int:
        """The rows the caches were allocated (and the graphs captured) for."""
        return self._rows

    def for_batch(self, rows: int) -> "GraphedCsmEngines | None":
        """``self`` for up to :attr:`batch_size` rows; None for more (the graphs cannot grow)."""
        return self if rows <= self.batch_size else None


def cuda_graph_engines(model: Csm, batch_size: int = 1, *, capture: bool = True) -> GraphedCsmEngines:
    """:class:`GraphedCsmEngines` whose backbone step, decoder steps and greedy frames run through :class:`StaticStep`.

    ``capture=True`` needs the model on a CUDA device (:func:`check_cuda_graph_device`); ``capture=False``
    keeps the static-buffer plumbing without capturing (any device).
    """
    if capture:
        check_cuda_graph_device(model.codebook0_head.weight.device)
    engines = GraphedCsmEngines(model, batch_size)
    engines.backbone = GraphedBackbone(model, capture)
    engines.decoder = GraphedDepthDecoder(model, capture)
    engines.frame_decoder = GraphedFrame(model, capture)
    return engines
