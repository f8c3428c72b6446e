"""The ``compiled`` backend's engines: CSM's backbone and depth decoder under ``torch.compile``.

They implement :class:`csm_core.components.BackboneEngine` and :class:`~csm_core.components.DepthDecoderEngine`
on top of the shared model layer: :meth:`csm_model.model.Csm.backbone_logits` and
:meth:`~csm_model.model.Csm.decoder_logits` are compiled as they are, KV-cache writes included
(``fullgraph=True``: a graph break is an error, not a silently eager fallback). Everything else of a
turn (embeddings, sampling, end of speech, streaming) is the core's, the same on every backend.
"""

from __future__ import annotations

import torch

from csm_model.model import Csm


class CompiledBackbone:
    """The backbone of a :class:`Csm`, its ``backbone_logits`` compiled once; prefill and step share it
    (the prompt length varies, so the compiled graph becomes dynamic in T after the first new length)."""

    def __init__(self, model: Csm, forward) -> None:
        self.model = model
        self.max_positions = model.args.max_seq_len
        self._forward = forward

    def reset(self) -> None:
        self.model.backbone.reset_cache()

    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(embeds, positions)

    @torch.no_grad()
    def step(self, embed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(embed, position)


class CompiledDepthDecoder:
    """The depth decoder of a :class:`Csm`, its ``decoder_logits`` compiled (T=2 on a frame's first
    call, T=1 after: two graphs)."""

    def __init__(self, model: Csm, forward) -> None:
        self.model = model
        self._forward = forward

    def reset(self) -> None:
        self.model.decoder.reset_cache()

    @torch.no_grad()
    def step(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self._forward(x, positions)


class CompiledCsmEngines:
    """What the ``compiled`` backend returns for the ``csm`` component (:class:`csm_core.components.CsmEngines`).

    ``backend`` is the ``torch.compile`` backend (``"inductor"``, ``"aot_eager"``, ...). The model's
    KV caches are allocated here for one row (a fixed batch: :meth:`for_batch` offers no other), and the
    compiled graphs write into them in place.
    """

    batch_size = 1

    def __init__(self, model: Csm, backend: str = "inductor") -> None:
        model.setup_caches(self.batch_size)
        self.model = model
        compile = lambda fn: torch.compile(fn, backend=backend, fullgraph=True)  # noqa: E731
        self.backbone = CompiledBackbone(model, compile(model.backbone_logits))
        self.decoder = CompiledDepthDecoder(model, compile(model.decoder_logits))
        self.frame_decoder = None  # no whole-frame engine: the core decodes a frame step by step

    def for_batch(self, rows: int) -> CompiledCsmEngines | None:
        """``self`` for one row; None for more (the caller says that this backend speaks one at a time)."""
        return self if rows <= self.batch_size else None
