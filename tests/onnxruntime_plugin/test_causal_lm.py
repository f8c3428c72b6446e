"""The ``causal_lm`` engine of the onnxruntime backend against PyTorch and transformers.

Parity on two random models: a Llama with a wide initialisation (varied greedy answers) and the tiny
chat model of ``--preset tiny`` driven through the ``transformers`` llm stage of a pipeline. Greedy
ids must be identical to the PyTorch engine and to ``model.generate`` over a whole answer of fixed
length; logits within 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from csm_core.components import CausalLm, CausalLmEngine
from csm_core.generation.lm_decoding import LmSampling, decode_tokens
from csm_pytorch.causal_lm import TorchCausalLm

pytestmark = pytest.mark.slow  # exports two tiny LM graphs (~15 s each on 2 cores)

PROMPT = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11]
EMOTIONS = ("happy", "calm", "sad", "neutral")


@pytest.fixture(scope="module")
def ort_lm(lm, onnx_cache):
    from ort_helpers import make_context

    from csm_onnxruntime.causal_lm import OnnxCausalLm

    context = make_context(onnx_cache)
    return OnnxCausalLm(CausalLm(lm, 128), context), context


def generate(model, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_ids_equal_pytorch_and_generate(lm, ort_lm):
    engine, context = ort_lm
    assert isinstance(engine, CausalLmEngine) and "exporting causal_lm" in context.events[0]
    ours = decode_tokens(engine, PROMPT, 48)
    assert ours == decode_tokens(TorchCausalLm(CausalLm(lm, 128)), PROMPT, 48) == generate(lm, PROMPT, 48)
    assert len(set(ours)) > 5


def test_logits_match_pytorch_at_prefill_and_every_step(lm, ort_lm):
    engine, _ = ort_lm
    reference = TorchCausalLm(CausalLm(lm, 128))
    tokens = decode_tokens(reference, PROMPT, 16)
    engine.reset(), reference.reset()
    prompt = torch.tensor([PROMPT])
    torch.testing.assert_close(engine.prefill(prompt), reference.prefill(prompt), atol=1e-4, rtol=0)
    for token in tokens:
        t = torch.tensor([[token]])
        torch.testing.assert_close(engine.step(t), reference.step(t), atol=1e-4, rtol=0)
    assert engine.position == reference.position == len(PROMPT) + len(tokens)


def test_seeded_sampling_draws_the_same_tokens_on_both_backends(lm, ort_lm):
    engine, _ = ort_lm
    hot = LmSampling(temperature=1.2, top_p=0.9, seed=11)
    assert decode_tokens(engine, PROMPT, 32, hot) == decode_tokens(TorchCausalLm(CausalLm(lm, 128)), PROMPT, 32, hot)


def test_the_cached_graph_is_reused_and_a_corrupt_one_rebuilt(lm, ort_lm, tmp_path):
    import shutil

    from ort_helpers import make_context

    from csm_onnxruntime.causal_lm import OnnxCausalLm

    engine, _ = ort_lm
    again = make_context(engine.artifact.path.parent.parent)
    assert OnnxCausalLm(CausalLm(lm, 128), again).artifact.built is False and again.events == []

    (tmp_path / "onnx").mkdir()
    copy = tmp_path / "onnx" / engine.artifact.path.name
    shutil.copy(engine.artifact.path, copy)
    shutil.copy(str(engine.artifact.path) + ".sha256", str(copy) + ".sha256")
    copy.write_bytes(copy.read_bytes()[:1000])  # truncated
    context = make_context(tmp_path)
    rebuilt = OnnxCausalLm(CausalLm(lm, 128), context)
    assert rebuilt.artifact.built and any("rebuilding causal_lm-" in e and "checksum" in e for e in context.events)
    assert decode_tokens(rebuilt, PROMPT, 12) == decode_tokens(engine, PROMPT, 12)


def test_the_llm_stage_runs_on_onnxruntime_with_the_same_answer(onnx_cache):
    import csm_listen.plugin as listen_plugin
    import csm_onnxruntime.plugin as ort_plugin
    import csm_model.plugin as model_plugin
    import csm_pytorch.plugin as torch_plugin
    from csm_core.config import Settings
    from csm_core.pipeline import Pipeline
    from csm_core.plugins import Plugins
    from csm_core.stages import ReplyRequest
    from csm_onnxruntime.causal_lm import OnnxCausalLm

    plugins = Plugins()
    for module, name in ((model_plugin, "model"), (torch_plugin, "pytorch"), (ort_plugin, "onnxruntime"), (listen_plugin, "listen")):
        plugins.register(module, name=name)

    def stage(backend: str):
        settings = Settings(backend=backend, device="cpu", models={"preset": "tiny"}, cache_dir=onnx_cache,
                            options={"transformers": {"max_new_tokens": 24, "max_positions": 1024}})
        return Pipeline(settings, plugins=plugins).stage("llm")

    on_ort, on_torch = stage("onnxruntime"), stage("pytorch")
    assert isinstance(on_ort.engine, OnnxCausalLm) and isinstance(on_torch.engine, TorchCausalLm)
    request = ReplyRequest("How was your day?", None, (), EMOTIONS)
    assert on_ort.reply(request) == on_torch.reply(request)
    # the whole fixed-length answer, no stop ids, against generate() on the chat model
    prompt = on_ort._encode(on_ort.prompt(request))
    ids = decode_tokens(on_ort.engine, prompt, 24)
    assert ids == decode_tokens(on_torch.engine, prompt, 24) == generate(on_torch.model, prompt, 24)
