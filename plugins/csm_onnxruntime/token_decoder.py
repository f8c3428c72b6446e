"""One token-decoder graph run with IO binding: ``input_ids`` at ``position_ids`` over a static cache -> last logits.

The reply LM's ``causal_lm`` graph (:mod:`csm_export.lm_export`) and Whisper's ``whisper_decoder``
(:mod:`csm_export.whisper_export`) are called the same way: inputs ``input_ids`` and ``position_ids``
[1,T] int64, ``past_key_values.{i}.key/value`` [1,H,L,head_dim] with a static ``L`` and, for Whisper,
inputs fixed over one decoding (``cross.{i}.key/value``); outputs ``logits`` [1,V] float32 (of the last
token) and ``present.{i}.key/value``. The caches are ping-pong :class:`~csm_onnxruntime.io_binding.CacheBuffers`;
slots after the last written position are masked in the graph, so a restart only goes back to the first
set. Every tensor is bound by data pointer on one device: nothing is copied per call.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from csm_onnxruntime.io_binding import CacheBuffers, bind_tensor


class TokenDecoder:
    """``run(input_ids [1,T], start) -> logits [1,V]`` float32 over ``session``, an ORT session of a
    token-decoder graph with ``layers`` caches of ``cache_shape`` in ``dtype``, on ``device``.

    ``fixed`` maps the graph's other inputs to their shapes: :attr:`fixed` holds a zeroed buffer of each
    (in ``dtype``, on ``device``) for their owner to fill; they are bound as they are at every call.
    """

    def __init__(self, session, layers: int, cache_shape, dtype: torch.dtype, device: torch.device,
                 vocab_size: int, fixed: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.session, self.device, self.vocab_size = session, device, vocab_size
        self.caches = CacheBuffers(layers, cache_shape, dtype, device)
        self.fixed = {name: torch.zeros(shape, dtype=dtype, device=device) for name, shape in (fixed or {}).items()}

    def restart(self) -> None:
        """Start a new sequence: the next call reads the first cache set (its stale slots are masked)."""
        self.caches.restart()

    def run(self, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        """Write ``input_ids`` [1,T] int64 at positions ``start..start+T-1`` (a prompt, or one token per
        step) and swap the caches; the last token's logits [1,V] float32, a new tensor on the device."""
        end = start + input_ids.shape[1]
        inputs = {"input_ids": input_ids.to(self.device).contiguous(),  # kept referenced until the run is done
                  "position_ids": torch.arange(start, end, device=self.device)[None].contiguous(), **self.fixed}
        logits = torch.empty(1, self.vocab_size, dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        for name, tensor in inputs.items():
            bind_tensor(binding, name, tensor)
        self.caches.bind(binding)
        bind_tensor(binding, "logits", logits, output=True)
        self.session.run_with_iobinding(binding)
        self.caches.swap()
        return logits
