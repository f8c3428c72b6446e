"""Choosing the next code from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

All functions take logits [B,V] (any float dtype, any device) and return codes [B] int64 on the same
device. Randomness comes only from the ``torch.Generator`` passed in, so a seed fixes the result on a
given device (CPU and CUDA generators produce different streams).

A draw is an exponential race: ``argmax(probs / noise)`` with ``noise`` ~ Exp(1) per code (the same
distribution as ``torch.multinomial``). The noise is an explicit tensor (:func:`draw_noise`), so a
backend that decodes a whole frame in one graph can take the core's noise as an input and choose
exactly the codes the core would (:func:`choose_with_noise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from csm_core.errors import CsmError

__all__ = ["SamplingError", "SamplingParams", "sample", "limit_logits", "filter_logits", "draw_noise", "choose_with_noise"]


class SamplingError(CsmError, ValueError):
    """Sampling parameters that cannot be used; the message names the parameter, the value and the limit."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick a code from logits.

    ``temperature`` 0 (or ``top_k`` 1) is greedy: the argmax. Otherwise logits are divided by
    ``temperature``, restricted to the ``top_k`` largest (None: no limit) and then to the smallest set
    whose probability reaches ``top_p`` (None or 1.0: no limit), and one code is drawn. Defaults are
    Sesame's generator's (temperature 0.9, top-k 50).

    ``code_limit`` restricts every choice to codes below it: CSM's heads score 2051 codes, but Mimi
    decodes only 2048, and untrained (random-weight) models do pick the others. None: no limit.

    Invalid values raise :class:`SamplingError` (a :class:`ValueError`).
    """

    temperature: float = 0.9
    top_k: int | None = 50
    top_p: float | None = None
    code_limit: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise SamplingError(f"SamplingParams.temperature={t!r}: must be a finite number >= 0 (0 means greedy)")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise SamplingError(f"SamplingParams.top_k={k!r}: must be an integer >= 1, or None for no limit")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise SamplingError(f"SamplingParams.top_p={p!r}: must be in (0, 1], or None for no limit")
        c = self.code_limit
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise SamplingError(f"SamplingParams.code_limit={c!r}: must be an integer >= 1, or None for no limit")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Float32 scores [B,V]: ``logits / temperature`` with codes outside top-k / top-p set to ``-inf``.

    The scores are shifted so that each row's best code scores 0 (softmax does not change): dividing by
    a tiny temperature (1e-45) then gives ``-inf`` for the others, never ``inf`` or NaN. The best code
    always stays, whatever ``top_p`` (a ``top_p`` below float32's resolution keeps it alone).
    """
    scores = logits.float()
    scores = (scores - scores.amax(dim=-1, keepdim=True)) / params.temperature
    if params.top_k is not None and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # Drop a code when the codes ranked above it already reach top_p (the best code always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        drop[..., 0] = False
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.empty_like(scores).scatter_(-1, order, sorted_scores)
    return scores


def limit_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``logits`` [B,V] cut to ``params.code_limit`` codes, after checking ``top_k`` against them.

    With a ``code_limit`` (a real model's sampling: the stage knows what its codec decodes), a
    ``top_k`` above the V codes the model scores raises :class:`SamplingError` naming ``--top-k``: the
    vocabulary is known only once the model is loaded, and this is where the two meet, before the first
    code of the first frame. Without one, a ``top_k`` of V or more means no limit. Greedy ignores top-k.
    """
    if logits.ndim != 2:
        raise ValueError(f"sample: logits must be [B,V], got shape {tuple(logits.shape)}")
    vocabulary = logits.shape[-1]
    k = params.top_k
    if params.code_limit is not None and k is not None and k > vocabulary and not params.greedy:
        raise SamplingError(
            f"top-k {k} is larger than the model's audio vocabulary of {vocabulary} codes: set --top-k "
            f"(generation.top_k, or the emotion map's top_k) to at most {vocabulary}"
        )
    return logits if params.code_limit is None else logits[:, : params.code_limit]


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Codes [B] int64 drawn from ``logits`` [B,V] under ``params`` (argmax when ``params.greedy``), after
    :func:`limit_logits`. A draw takes one :func:`draw_noise` [B,V'] from ``generator``; greedy draws none."""
    logits = limit_logits(logits, params)
    if params.greedy:
        return logits.argmax(dim=-1)
    return choose_with_noise(logits, params, draw_noise(logits.shape, logits.device, generator))


def draw_noise(shape: torch.Size | tuple[int, int], device: torch.device | str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) noise [B,V] float32 for one draw of :func:`choose_with_noise` (``V`` after ``code_limit``)."""
    noise = torch.empty(tuple(shape), dtype=torch.float32, device=device).exponential_(1.0, generator=generator)
    return noise.clamp_min_(torch.finfo(torch.float32).tiny)  # never 0: probs / noise stays finite


def choose_with_noise(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor) -> torch.Tensor:
    """Codes [B]: the exponential race ``argmax(probs / noise)`` over ``filter_logits(logits, params)``.

    ``logits`` [B,V] are already cut to ``code_limit`` (as :func:`sample` does); ``noise`` [B,V] comes
    from :func:`draw_noise`. Codes that the filters removed have probability 0 and never win.
    """
    probs = filter_logits(logits, params).softmax(dim=-1)
    return (probs / noise).argmax(dim=-1)
