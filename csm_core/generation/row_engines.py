"""Engines with per-row caches: what a :class:`~csm_core.generation.batch_session.BatchSession` drives.

A batch session keeps one request per *row* of the backbone's KV cache for the request's lifetime, so it
needs three things of the ``csm`` engines beyond :class:`~csm_core.components.CsmEngines`'s batch calls
(see :class:`~csm_core.components.RowEngines`): prefill one row (the others untouched), reset a row, and
step a contiguous range of rows, each at its own position.

:func:`row_engines` finds them: engines that implement the per-row methods (the eager PyTorch engines),
sized for the rows wanted with :meth:`~csm_core.components.CsmEngines.for_batch`; or, for one row, any
engines at all through :class:`OneRow` (reset + prefill, step: a backend that serves one request at a
time, such as ONNX Runtime graphs exported for a batch of one, TensorRT engines, captured CUDA graphs).
"""

from __future__ import annotations

import torch

from csm_core.errors import CsmError

__all__ = ["BatchingUnsupported", "OneRow", "has_row_methods", "row_engines"]

ROW_METHODS = ("prefill_row", "reset_row", "step_rows")


class BatchingUnsupported(CsmError):
    """The engines cannot hold several requests in rows of their own (they serve one request at a time)."""


def has_row_methods(engines) -> bool:
    """True when ``engines`` offer the per-row calls and they run what ``engines.backbone`` runs
    (``per_row_calls``, :class:`csm_core.components.RowEngines`)."""
    return all(callable(getattr(engines, name, None)) for name in ROW_METHODS) and getattr(engines, "per_row_calls", True)


class OneRow:
    """Per-row calls for engines of one row that lack them: row 0 only, through ``reset``/``prefill``/``step``."""

    def __init__(self, engines) -> None:
        self.engines = engines
        self.backbone, self.decoder = engines.backbone, engines.decoder
        self.batch_size = 1

    @staticmethod
    def _row(row: int, rows: int = 1) -> None:
        if row != 0 or rows != 1:
            raise BatchingUnsupported(f"these engines hold one row; got row {row} (+{rows})")

    def prefill_row(self, row: int, embeds: torch.Tensor, positions: torch.Tensor):
        self._row(row)
        self.backbone.reset()
        return self.backbone.prefill(embeds, positions)

    def reset_row(self, row: int) -> None:
        self._row(row)

    def step_rows(self, first: int, embeds: torch.Tensor, positions: torch.Tensor):
        self._row(first, embeds.shape[0])
        return self.backbone.step(embeds, positions)


def row_engines(engines, rows: int):
    """``engines`` as per-row engines with room for ``rows`` rows, or :class:`BatchingUnsupported`
    (naming the engines) when they cannot hold more than one request."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows={rows!r}: must be an integer >= 1")
    sized = engines.for_batch(rows) if callable(getattr(engines, "for_batch", None)) else None
    if sized is not None and has_row_methods(sized) and sized.batch_size >= rows:
        return sized
    if rows == 1:
        return OneRow(engines)
    raise BatchingUnsupported(
        f"{type(engines).__name__} (backbone {type(engines.backbone).__name__}) cannot hold {rows} requests in "
        "rows of their own (exported graphs of a fixed batch, TensorRT engines and captured CUDA graphs serve "
        "one request at a time); use the eager 'pytorch' backend for batching"
    )
