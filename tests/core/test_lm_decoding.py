"""The shared token loop (:mod:`csm_core.generation.lm_decoding`) on the PyTorch ``causal_lm`` engine.

The reference is transformers itself: ``model.generate`` and the full-sequence ``forward`` of the
same random model. The model has a wide initialisation so its greedy answers vary from token to
token (the default 0.02 gives near-uniform logits and one token repeated).
"""

from __future__ import annotations

import pytest
import torch

from csm_core.components import CausalLm, CausalLmEngine
from csm_core.generation.lm_decoding import LmSampling, decode_tokens, next_token, nucleus_probabilities
from csm_pytorch.causal_lm import TorchCausalLm

PROMPT = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11]


@pytest.fixture()
def engine(lm):
    return TorchCausalLm(CausalLm(lm, 128))


def generate(lm, prompt, max_new_tokens, eos=None):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                          do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_engine_meets_the_interface(engine):
    assert isinstance(engine, CausalLmEngine) and engine.max_positions == 128


def test_prefill_and_steps_give_the_logits_of_the_full_forward(lm, engine):
    ids = torch.tensor([PROMPT + [1, 2, 3, 4]])
    with torch.inference_mode():
        full = lm(ids).logits[0]
    got = [engine.prefill(ids[:, :6])]
    got += [engine.prefill(ids[:, 6:10])]  # prefill appends
    got += [engine.step(ids[:, p : p + 1]) for p in range(10, 14)]
    assert engine.position == 14
    assert got[0].shape == (1, 300) and got[0].dtype == torch.float32
    expected = [full[5], full[9], *full[10:14]]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g[0], e, atol=1e-5, rtol=0)
    engine.reset()
    torch.testing.assert_close(engine.prefill(ids[:, :6])[0], full[5], atol=1e-5, rtol=0)


def test_greedy_ids_equal_transformers_generate(lm, engine):
    ours = decode_tokens(engine, PROMPT, 40)
    assert ours == generate(lm, PROMPT, 40)
    assert len(set(ours)) > 5  # a varied answer, not one token repeated


def test_a_stop_id_ends_the_answer_where_generate_stops(lm, engine):
    free = decode_tokens(engine, PROMPT, 30)
    stop = free[7]
    cut = free.index(stop) + 1
    assert decode_tokens(engine, PROMPT, 30, stop_ids=[stop, 299]) == free[:cut]
    assert generate(lm, PROMPT, 30, eos=[stop, 299])[:cut] == free[:cut]


def test_sampling_is_seeded_and_the_seed_matters(engine):
    hot = LmSampling(temperature=1.5, seed=1)
    a = decode_tokens(engine, PROMPT, 24, hot)
    assert decode_tokens(engine, PROMPT, 24, hot) == a
    assert decode_tokens(engine, PROMPT, 24, LmSampling(temperature=1.5, seed=2)) != a
    # a nucleus thinner than any token keeps only the most likely one: greedy
    assert decode_tokens(engine, PROMPT, 24, LmSampling(temperature=1.5, top_p=1e-6, seed=1)) == decode_tokens(
        engine, PROMPT, 24
    )


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    torch.testing.assert_close(nucleus_probabilities(logits, 1.0, 0.7), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    torch.testing.assert_close(nucleus_probabilities(logits, 1.0, 0.5), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(nucleus_probabilities(logits, 1.0, 1.0), torch.tensor([0.5, 0.3, 0.15, 0.05]))
    # temperature 2 = square roots of the probabilities, renormalised
    roots = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    torch.testing.assert_close(nucleus_probabilities(logits, 2.0, 1.0), roots / roots.sum())


def test_sampled_frequencies_follow_the_probabilities():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    generator = torch.Generator().manual_seed(0)
    sampling = LmSampling(temperature=1.0, top_p=0.9)  # keeps 0.5, 0.3, 0.15 -> /0.95
    draws = torch.tensor([next_token(logits, sampling, generator) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.03, rtol=0)


def test_bad_inputs_name_the_problem(lm, engine):
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        decode_tokens(engine, [], 4)
    with pytest.raises(ValueError, match="needs 137 positions.*holds 128"):
        decode_tokens(engine, list(range(100)), 38)
    with pytest.raises(ValueError, match=r"step: token must be \[1, 1\]"):
        engine.step(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"prefill: input_ids must be an int64 tensor \[1, T\]"):
        engine.prefill(torch.tensor([1, 2]))
    engine.reset()
    engine.prefill(torch.zeros(1, 120, dtype=torch.int64))
    with pytest.raises(ValueError, match="at position 120 would end at 130, past the 128 positions"):
        engine.prefill(torch.zeros(1, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_positions=512: must be in 1..256"):
        TorchCausalLm(CausalLm(lm, 512))
    with pytest.raises(ValueError, match="temperature=-1"):
        LmSampling(temperature=-1)
    with pytest.raises(ValueError, match="top_p=0"):
        LmSampling(top_p=0)
