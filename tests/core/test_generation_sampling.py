"""Sampling codes from logits: greedy, temperature, top-k, top-p, seeds, and parameter validation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_core.generation.sampling import SamplingParams, filter_logits, sample  # noqa: E402


def logits(batch: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def draws(x: torch.Tensor, params: SamplingParams, n: int = 200, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([sample(x, params, gen) for _ in range(n)], dim=1)  # [B, n]


def test_temperature_zero_and_top_k_one_are_argmax():
    x = logits()
    assert torch.equal(sample(x, SamplingParams(temperature=0.0)), x.argmax(-1))
    assert torch.equal(sample(x, SamplingParams(temperature=1.5, top_k=1), torch.Generator()), x.argmax(-1))


def test_top_k_never_picks_outside_the_top_k():
    x = logits()
    got = draws(x, SamplingParams(temperature=5.0, top_k=3))  # high temperature: flat within the top 3
    top3 = torch.topk(x, 3, dim=-1).indices
    assert (got.unsqueeze(-1) == top3.unsqueeze(1)).any(-1).all()
    assert all(len(set(row.tolist())) == 3 for row in got)  # and it does use all three


def test_top_p_keeps_the_smallest_nucleus():
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.9, 0.03, 0.02]]))
    got = draws(x, SamplingParams(temperature=1.0, top_k=None, top_p=0.75))
    assert set(got[0].tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    assert set(got[1].tolist()) == {1}  # 0.9 alone does
    scores = filter_logits(x, SamplingParams(temperature=1.0, top_k=None, top_p=0.75))
    assert torch.isinf(scores[0, 2:]).all() and torch.isfinite(scores[0, :2]).all()


def test_temperature_spreads_or_sharpens_the_distribution():
    x = logits(batch=1)
    cold = draws(x, SamplingParams(temperature=0.05, top_k=None))
    hot = draws(x, SamplingParams(temperature=20.0, top_k=None))
    assert set(cold[0].tolist()) == {int(x.argmax())}
    assert len(set(hot[0].tolist())) > 20


def test_same_seed_same_codes_and_different_seed_differs():
    x = logits()
    params = SamplingParams(temperature=1.0, top_k=20)
    assert torch.equal(draws(x, params, n=30, seed=7), draws(x, params, n=30, seed=7))
    assert not torch.equal(draws(x, params, n=30, seed=7), draws(x, params, n=30, seed=8))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_invalid_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field}="):
        SamplingParams(**kwargs)


def test_logits_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"\[B,V\]"):
        sample(torch.zeros(5), SamplingParams(temperature=0))


def test_code_limit_keeps_every_choice_below_it():
    logits = torch.zeros(4, 10)
    logits[:, 8:] = 100.0  # the best codes are the forbidden ones
    greedy = SamplingParams(temperature=0, code_limit=8)
    assert sample(logits, greedy).max() < 8
    drawn = sample(logits, SamplingParams(temperature=1.0, top_k=None, code_limit=8), torch.Generator().manual_seed(0))
    assert drawn.max() < 8
    with pytest.raises(ValueError, match="code_limit"):
        SamplingParams(code_limit=0)


def test_the_exponential_race_draws_each_code_with_its_probability():
    # 40k draws of a 4-code distribution: each frequency within 4 standard errors of its probability.
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(40_000, 4)
    params = SamplingParams(temperature=1.0, top_k=None)
    codes = sample(logits, params, torch.Generator().manual_seed(7))
    probs = logits[0].softmax(-1)
    freq = torch.bincount(codes, minlength=4).double() / len(codes)
    sigma = (probs * (1 - probs) / len(codes)).sqrt()
    assert ((freq - probs).abs() <= 4 * sigma).all(), (freq, probs)


def test_noise_drawn_by_the_core_reproduces_a_seeded_draw():
    from csm_core.generation.sampling import choose_with_noise, draw_noise

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=0.8, top_k=10, top_p=0.9)
    noise = draw_noise(logits.shape, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(choose_with_noise(logits, params, noise), sample(logits, params, torch.Generator().manual_seed(5)))
