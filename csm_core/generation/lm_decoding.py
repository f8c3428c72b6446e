"""The token loop of the reply LM, the same on every backend: greedy, or temperature + top-p sampling.

:func:`decode_tokens` drives any :class:`csm_core.components.CausalLmEngine`: ``reset``, one ``prefill``
of the prompt, then one ``step`` per new token, until ``max_new_tokens`` or a stop token. Sampling uses
its own ``torch.Generator`` seeded with ``seed`` on the CPU (logits are moved there, one [V] row per
token), so the same seed gives the same tokens whatever the backend and device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from csm_core.generation.sampling import SamplingParams, filter_logits, sample


@dataclass(frozen=True)
class LmSampling:
    """``temperature`` 0 = greedy (argmax, first index on ties); else softmax(logits / temperature)
    restricted to the smallest set of tokens whose mass reaches ``top_p`` (nucleus sampling)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature={self.temperature!r}: must be >= 0 (0 = greedy decoding)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1] (1 = no nucleus cut)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def nucleus_probabilities(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """``logits`` [V] -> probabilities [V] float32 after temperature and the top-p cut (renormalised).

    A token is kept when the mass of the tokens ranked strictly above it is below ``top_p``, so the
    most likely token is always kept (:func:`csm_core.generation.sampling.filter_logits`).
    """
    return filter_logits(logits.reshape(1, -1).float(), _params(temperature, top_p)).softmax(dim=-1)[0]


def _params(temperature: float, top_p: float) -> SamplingParams:
    return SamplingParams(temperature=temperature, top_k=None, top_p=top_p)


def next_token(logits: torch.Tensor, sampling: LmSampling, generator: torch.Generator | None) -> int:
    """The next token id from ``logits`` [V] (or [1,V]), by the codes' sampling function
    (:func:`csm_core.generation.sampling.sample`) with no top-k."""
    row = logits.reshape(1, -1).float().cpu()
    return int(sample(row, _params(sampling.temperature, sampling.top_p), generator)[0])


def decode_tokens(
    engine,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: LmSampling = LmSampling(),
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Generate up to ``max_new_tokens`` ids after ``prompt_ids`` on ``engine``.

    The first id in ``stop_ids`` that is produced ends the answer and is included (as
    ``transformers``' ``generate`` does with its EOS ids). Raises ``ValueError`` when the prompt is
    empty or when prompt + answer would not fit the engine's ``max_positions``.
    """
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: the LM needs at least one token to continue")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    need = len(prompt_ids) + max_new_tokens - 1  # the last new token is never fed back
    if need > engine.max_positions:
        raise ValueError(
            f"a prompt of {len(prompt_ids)} tokens + max_new_tokens={max_new_tokens} needs {need} positions but "
            f"the engine's cache holds {engine.max_positions}: shorten the prompt or lower max_new_tokens"
        )
    generator = None
    if not sampling.greedy:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(sampling.seed)
    stops = set(int(i) for i in stop_ids)
    engine.reset()
    logits = engine.prefill(torch.tensor([list(prompt_ids)], dtype=torch.int64))
    out: list[int] = []
    while True:
        token = next_token(logits, sampling, generator)
        out.append(token)
        if token in stops or len(out) == max_new_tokens:
            return out
        logits = engine.step(torch.tensor([[token]], dtype=torch.int64))
