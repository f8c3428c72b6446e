"""The ``causal_lm`` engine of the pytorch backend: a transformers causal LM and its own KV cache.

:class:`TorchCausalLm` implements :class:`csm_core.components.CausalLmEngine` by calling the model's
``forward`` with a transformers ``DynamicCache`` (under the argument name the installed release
uses: :func:`csm_model.hf_compat.cache_kwargs`) and explicit positions, keeping only the last
position's logits (``logits_to_keep=1``). It is the reference the other backends' engines are held to.
"""

from __future__ import annotations

import torch

from csm_core.components import CausalLm
from csm_core.generation.token_steps import TokenSteps, check_max_positions


class TorchCausalLm(TokenSteps):
    """:class:`~csm_core.components.CausalLmEngine` over a transformers ``...ForCausalLM`` in PyTorch."""

    def __init__(self, component: CausalLm) -> None:
        self.max_positions = check_max_positions(component)
        self.model = component.model
        self.device = next(self.model.parameters()).device
        self.position = 0
        self._cache = None

    def reset(self) -> None:
        self.position = 0
        self._cache = None

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        from csm_model.hf_compat import cache_kwargs, output_cache

        if self._cache is None:
            self._cache = DynamicCache(config=self.model.config)
        t = input_ids.shape[1]
        positions = torch.arange(self.position, self.position + t, device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids.to(self.device),
                position_ids=positions[None],
                cache_position=positions,
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(self.model, self._cache),
            )
        self._cache = output_cache(out)
        self.position += t
        return out.logits[:, -1].float()
