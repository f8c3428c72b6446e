"""The static-cache LM graph (:mod:`csm_export.lm_export`) run eagerly in PyTorch, before export.

Each supported family (Llama, Qwen2 with q/k/v biases, Qwen3 with per-head q/k norms) is checked
against transformers' own full-sequence ``forward`` of the same random model: prefill a prefix, then
one token at a time through the explicit caches. Refusals come without exporting anything.
"""

from __future__ import annotations

import pytest
import torch

from csm_core.components import CausalLm
from csm_export.lm_export import CausalLmGraph, UnsupportedLm, check_exportable, lm_cache_shape

SIZES = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3)


def build(family: str, **extra):
    import transformers

    config_cls, model_cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
    }[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**SIZES, **extra})
    return getattr(transformers, model_cls)(config).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_graph_with_explicit_caches_matches_the_full_forward(family):
    model = build(family, **({"head_dim": 16} if family == "qwen3" else {}))
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits[0]
        graph = CausalLmGraph(model, 64)
        past = [torch.zeros(lm_cache_shape(model, 64)) for _ in range(4)]
        logits, *past = graph(ids[:, :12], torch.arange(12)[None], *past)
        got = [logits[0]]
        for p in range(12, 20):
            logits, *past = graph(ids[:, p : p + 1], torch.tensor([[p]]), *past)
            got.append(logits[0])
    torch.testing.assert_close(torch.stack(got), full[11:20], atol=1e-4, rtol=0)
    assert past[0].shape == lm_cache_shape(model, 64)


def test_unsupported_architectures_are_refused_with_the_list():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=64))
    supported = "supports model types llama, mistral, qwen2, qwen3, not 'gpt2'.*backends.llm"
    with pytest.raises(UnsupportedLm, match=supported):
        check_exportable(gpt2, 64)


def test_sliding_window_shorter_than_the_cache_is_refused():
    mistral = build("mistral", sliding_window=32)
    with pytest.raises(UnsupportedLm, match="sliding-window attention of 32 positions.*max_positions=64"):
        check_exportable(mistral, 64)
    check_exportable(mistral, 32)


def test_bf16_and_oversized_caches_are_refused_before_any_export(tmp_path):
    from ort_helpers import make_context

    from csm_onnxruntime.causal_lm import OnnxCausalLm

    context = make_context(tmp_path)
    model = build("llama")
    with pytest.raises(ValueError, match="max_positions=512: must be in 1..256"):
        OnnxCausalLm(CausalLm(model, 512), context)
    with pytest.raises(ValueError, match="bfloat16.*component_precision.llm"):
        OnnxCausalLm(CausalLm(model.to(torch.bfloat16), 64), context)
    assert not (tmp_path / "onnx").exists()
