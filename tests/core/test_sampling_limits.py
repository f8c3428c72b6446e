"""Sampling at the edges of its parameters: tiny temperatures and nucleus masses still pick a code, and a
top-k beyond the codes the model can choose from is refused (csm_core.generation.sampling)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_core.errors import CsmError  # noqa: E402
from csm_core.generation.sampling import SamplingError, SamplingParams, filter_logits, sample  # noqa: E402


def logits() -> torch.Tensor:
    return torch.randn(3, 64, generator=torch.Generator().manual_seed(1)) * 4


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-8])
def test_a_tiny_temperature_picks_the_best_code(temperature):
    x = logits()
    params = SamplingParams(temperature=temperature, top_k=None)
    assert not torch.isnan(filter_logits(x, params)).any()
    assert torch.equal(sample(x, params, torch.Generator().manual_seed(0)), x.argmax(-1))


def test_a_nucleus_below_float32_resolution_keeps_the_best_code():
    x = logits()
    params = SamplingParams(temperature=1.0, top_k=None, top_p=1e-300)
    assert torch.equal(sample(x, params, torch.Generator().manual_seed(0)), x.argmax(-1))


def test_top_k_beyond_the_models_vocabulary_is_refused_naming_the_flag():
    scores = torch.zeros(1, 2051)  # what CSM's heads score; Mimi decodes the first 2048
    with pytest.raises(SamplingError, match=r"top-k 5000 is larger than the model's audio vocabulary of 2051 "
                                            r"codes: set --top-k .* at most 2051") as info:
        sample(scores, SamplingParams(temperature=0.9, top_k=5000, code_limit=2048), torch.Generator())
    assert isinstance(info.value, CsmError) and isinstance(info.value, ValueError)
    drawn = sample(scores, SamplingParams(temperature=0.9, top_k=2051, code_limit=2048), torch.Generator())
    assert int(drawn) < 2048  # all of the vocabulary is fine, and the codec's limit still holds
    assert int(sample(scores, SamplingParams(temperature=0.0, top_k=5000, code_limit=2048))) == 0  # greedy
    # without a code limit (no model behind it) a top-k of V or more means no limit, as before
    sample(torch.zeros(1, 8), SamplingParams(temperature=0.9, top_k=50), torch.Generator())
