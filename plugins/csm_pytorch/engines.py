"""The PyTorch backend's ``csm`` engines: the backbone and depth decoder of a :class:`~csm_model.model.Csm`
run eagerly, each call under ``torch.inference_mode``. :mod:`csm_pytorch.cuda_graphs` captures them."""

from __future__ import annotations

from contextlib import contextmanager

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


@contextmanager
def _cache_rows(part, first: int, count: int):
    """Make ``part``'s (a :class:`~csm_model.model.Transformer`) KV caches look like rows
    ``first..first+count-1`` only (views: writes land in the full caches), for the duration."""
    full = [(block.attn, block.attn.k_cache, block.attn.v_cache) for block in part.layers]
    if first < 0 or first + count > part.batch_size:
        raise ValueError(f"rows {first}..{first + count - 1} are outside the {part.batch_size} rows of the KV cache")
    try:
        for attn, k, v in full:
            attn.k_cache, attn.v_cache = k[first : first + count], v[first : first + count]
        yield
    finally:
        for attn, k, v in full:
            attn.k_cache, attn.v_cache = k, v


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

    # -- per-row calls (csm_core.components.RowEngines), for continuous batching ---------------------
    @property
    def per_row_calls(self) -> bool:
        """The per-row calls run the model's own backbone: valid only while ``backbone`` is the eager one
        (not a wrapper, not a captured step, which they would bypass)."""
        return type(self.backbone) is TorchBackbone

    @torch.inference_mode()
    def prefill_row(self, row: int, embeds: torch.Tensor, positions: torch.Tensor):
        """Prefill ``embeds`` [1,T,D] at ``positions`` [1,T] into cache row ``row`` only -> (hidden [1,D],
        c0_logits [1,V]). The row's entries beyond the prompt are stale but masked by position."""
        with _cache_rows(self.model.backbone, row, 1):
            return self.model.backbone_logits(embeds, positions)

    def reset_row(self, row: int) -> None:
        """Nothing to do: the next :meth:`prefill_row` overwrites positions 0..T-1 and the causal mask hides
        the stale entries beyond a row's position until a step overwrites them."""
        if not 0 <= row < self.batch_size:
            raise ValueError(f"row {row} is outside the {self.batch_size} rows of the KV cache")

    @torch.inference_mode()
    def step_rows(self, first: int, embeds: torch.Tensor, positions: torch.Tensor):
        """One backbone step of cache rows ``first..first+B-1``: ``embeds`` [B,1,D], ``positions`` [B,1]
        (each row its own) -> (hidden [B,D], c0_logits [B,V])."""
        with _cache_rows(self.model.backbone, first, embeds.shape[0]):
            return self.model.backbone_logits(embeds, positions)

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
