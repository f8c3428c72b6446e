"""The checks every backend's :class:`~csm_core.components.CausalLmEngine` makes, in one place.

A backend's engine subclasses :class:`TokenSteps` and implements ``_run``; the token loop that drives
it is :mod:`csm_core.generation.lm_decoding`.
"""

from __future__ import annotations

import torch

from csm_core.components import CausalLm


def check_input_ids(input_ids: torch.Tensor, what: str, engine) -> torch.Tensor:
    """``input_ids`` as [1,T] int64 with T >= 1 that fits the cache, or a ``ValueError`` saying why."""
    tensor = isinstance(input_ids, torch.Tensor)
    if not tensor or input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        shape = tuple(input_ids.shape) if tensor else type(input_ids).__name__
        raise ValueError(f"{what}: input_ids must be an int64 tensor [1, T] with T >= 1, got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what}: input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    end = engine.position + input_ids.shape[1]
    if end > engine.max_positions:
        raise ValueError(
            f"{what}: {input_ids.shape[1]} tokens at position {engine.position} would end at {end}, past the "
            f"{engine.max_positions} positions of the cache; call reset() or raise max_positions"
        )
    return input_ids.to(torch.int64)


def check_max_positions(component: CausalLm) -> int:
    """``component.max_positions`` when it is within the model's ``max_position_embeddings``, else ``ValueError``."""
    limit = getattr(component.model.config, "max_position_embeddings", None)
    if component.max_positions < 1 or (limit is not None and component.max_positions > limit):
        raise ValueError(
            f"max_positions={component.max_positions}: must be in 1..{limit} (the model's max_position_embeddings)"
        )
    return component.max_positions


class TokenSteps:
    """``prefill``/``step`` of a :class:`~csm_core.components.CausalLmEngine`, checked the same way on
    every backend; a subclass has ``position`` and ``max_positions`` and implements ``_run(input_ids)``
    (append [1,T] tokens at ``position``, return the last position's logits [1,V] float32)."""

    position: int
    max_positions: int

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._run(check_input_ids(input_ids, "prefill", self))

    def step(self, token: torch.Tensor) -> torch.Tensor:
        token = check_input_ids(token, "step", self)
        if token.shape[1] != 1:
            raise ValueError(f"step: token must be [1, 1], got {tuple(token.shape)}; use prefill for several tokens")
        return self._run(token)

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
