"""Streaming Mimi decoding of many independent rows, each with its own decoder state.

A row is one utterance being spoken: :meth:`RowDecoder.open` gives it a fresh streaming state,
:meth:`RowDecoder.decode` turns the next frame of some rows into audio (one codec call for all of them
where the codec offers ``decode_rows``, else one ``decode_step`` per row) and keeps each row's new
state, :meth:`RowDecoder.drop` forgets a row. One-by-one speaking is one row; continuous batching is
many. The same class runs in-line, on a decoding thread, and in a decoding process
(:mod:`csm_model.decoding_workers`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class RowDecoder:
    """Rows of streaming Mimi decoding over one codec engine (:class:`~csm_core.components.CodecEngine`)."""

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self.states: dict[int, Any] = {}  # row -> its streaming decoder state

    def open(self, row: int) -> None:
        """Start ``row`` from a fresh decoder state (its first frame is decoded as an utterance's first)."""
        self.states[row] = self.codec.init_state(1)

    def drop(self, row: int) -> None:
        """Forget ``row`` (ended or cancelled); a row that is not open is ignored."""
        self.states.pop(row, None)

    def decode(self, rows: list[int], codes: torch.Tensor) -> np.ndarray:
        """Decode one frame of each of ``rows``: ``codes`` [n,K] int64 -> samples [n, samples_per_frame]
        float32, row ``i`` of the result for ``rows[i]``. Each row continues from its own state.

        Raises KeyError for a row that is not open.
        """
        codes = codes[:, :, None]  # [n,K,1]
        states = [self.states[row] for row in rows]
        decode_rows = getattr(self.codec, "decode_rows", None)
        if decode_rows is not None and len(rows) > 1:
            pcm, states = decode_rows(codes, states)
        else:
            decoded = [self.codec.decode_step(codes[i : i + 1], state) for i, state in enumerate(states)]
            pcm, states = torch.cat([p for p, _ in decoded]), [state for _, state in decoded]
        for row, state in zip(rows, states):
            self.states[row] = state
        return pcm[:, 0].float().cpu().numpy()
