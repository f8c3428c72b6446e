"""The PyTorch backend's ``csm`` engines: the backbone and depth decoder of a :class:`~csm_model.model.Csm`
run eagerly, each call under ``torch.inference_mode``. :mod:`csm_pytorch.cuda_graphs` captures them."""

from __future__ import annotations

import torch

from csm_model.model import Csm


class TorchBackbone:
    """:class:`csm_core.components.BackboneEngine` running the backbone of a :class:`Csm` in eager PyTorch."""

    def __init__(self, model: Csm) -> None:
        self.model = model
        self.max_positions = model.args.max_seq_len

    def reset(self) -> None:
        self.model.backbone.reset_cache()

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.backbone_logits(embeds, positions)

    @torch.inference_mode()
    def step(self, embed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.backbone_logits(embed, position)


class TorchDepthDecoder:
    """:class:`csm_core.components.DepthDecoderEngine` running the depth decoder of a :class:`Csm`."""

    def __init__(self, model: Csm) -> None:
        self.model = model

    def reset(self) -> None:
        self.model.decoder.reset_cache()

    @torch.inference_mode()
    def step(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.decoder_logits(x, positions)


class TorchCsmEngines:
    """The ``csm`` component on the PyTorch backend: ``.backbone`` and ``.decoder`` over one :class:`Csm`.

    Allocates the model's caches for ``batch_size`` rows (calls may use fewer rows).
    """

    def __init__(self, model: Csm, batch_size: int = 1, dtype: torch.dtype | None = None, device=None) -> None:
        model.setup_caches(batch_size, dtype, device)
        self.model = model
        self.backbone = TorchBackbone(model)
        self.decoder = TorchDepthDecoder(model)
        self.frame_decoder = None  # no whole-frame engine in eager mode (csm_pytorch.cuda_graphs adds one)

    @property
    def batch_size(self) -> int:
        """Rows the model's caches hold now (the caches live in the model, shared by every engine over it)."""
        return self.model.backbone.batch_size

    def for_batch(self, rows: int) -> "TorchCsmEngines | None":
        """``self`` when the caches hold ``rows`` rows; else new eager engines with the model's caches
        re-allocated for ``rows`` (these then must not be used for more rows than the caches hold); None
        when this object's backbone or decoder was replaced (a wrapper, a captured step), which would not
        survive the re-allocation."""
        if rows <= self.batch_size:
            return self
        if type(self.backbone) is not TorchBackbone or type(self.decoder) is not TorchDepthDecoder:
            return None
        return TorchCsmEngines(self.model, batch_size=rows)
