"""The ``transformers`` llm stage on its backend's ``causal_lm`` engine (the PyTorch backend here).

The onnxruntime side of the same stage is in ``tests/onnxruntime_plugin/test_causal_lm.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch

import csm_listen.plugin as listen_plugin
import csm_model.plugin as model_plugin
import csm_pytorch.plugin as torch_plugin
from csm_core import hookimpl
from csm_core.config import Settings
from csm_core.errors import BackendUnavailable, ConfigError, CsmError
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins
from csm_core.records import Backend, StageContext
from csm_core.registry import Registry
from csm_core.stages import ReplyRequest
from csm_core.generation.lm_decoding import decode_tokens
from csm_pytorch.causal_lm import TorchCausalLm
from csm_listen.reply_llm import TransformersReplyModel
from csm_listen.tiny_models import write_tiny_chat_lm

EMOTIONS = ("happy", "calm", "sad", "neutral")


class TextOnly:
    """A backend with no causal_lm engine."""

    @hookimpl
    def register_backends(self, register):
        register(Backend(name="text-only", engines={}, check=lambda: None))


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return write_tiny_chat_lm(tmp_path_factory.mktemp("chat") / "tiny-chat", seed=5)


def plugins(*extra) -> Plugins:
    p = Plugins()
    p.register(model_plugin, name="model")
    p.register(torch_plugin, name="pytorch")
    p.register(listen_plugin, name="listen")
    for i, plugin in enumerate(extra):
        p.register(plugin, name=f"extra-{i}")
    return p


def settings(chat_dir, **options) -> Settings:
    return Settings(device="cpu", models={"llm": str(chat_dir)},
                    options={"transformers": {"max_new_tokens": 20, **options}})


def request(transcript="How was your day?") -> ReplyRequest:
    return ReplyRequest(transcript, None, (), EMOTIONS)


def test_the_pipeline_builds_the_stage_on_the_pytorch_engine(chat_dir):
    llm = Pipeline(settings(chat_dir), plugins()).stage("llm")
    assert isinstance(llm.engine, TorchCausalLm) and llm.engine.max_positions == 4096
    reply = llm.reply(request())
    # the stage's answer is the shared loop's tokens on its engine, stopping at the model's EOS ids
    prompt_ids = llm._encode(llm.prompt(request()))
    ids = decode_tokens(llm.engine, prompt_ids, 20, stop_ids=[260, 256])
    assert reply.raw == llm.tokenizer.decode(ids, skip_special_tokens=True)
    # and generate() with the same EOS ids produces the same tokens
    t = torch.tensor([prompt_ids])
    out = llm.model.generate(input_ids=t, attention_mask=torch.ones_like(t), max_new_tokens=20, do_sample=False,
                             pad_token_id=256)
    assert out[0, len(prompt_ids):len(prompt_ids) + len(ids)].tolist() == ids


def test_max_positions_sizes_the_cache_and_the_prompt_budget(chat_dir):
    from csm_core.stages import Segment

    llm = Pipeline(settings(chat_dir, max_positions=700), plugins()).stage("llm")
    assert llm.engine.max_positions == 700 and llm.prompt_budget == 680
    history = [Segment(i % 2, f"turn {i}: " + "x" * 40) for i in range(8)]
    asked = ReplyRequest("newest", None, tuple(history), EMOTIONS)
    prompt = llm.prompt(asked)
    assert len(llm._encode(prompt)) <= 680 and "turn 0:" not in prompt and "turn 7:" in prompt and "newest" in prompt
    assert llm.reply(asked).text


def test_a_prompt_that_cannot_fit_says_what_to_change(chat_dir):
    llm = Pipeline(settings(chat_dir, max_positions=200), plugins()).stage("llm")
    with pytest.raises(CsmError, match="without any history, more than the 180 .*max_positions = 200"):
        llm.reply(request())


def test_bad_max_positions_are_config_errors(chat_dir):
    with pytest.raises(ConfigError, match="max_positions = 5000 is more than the 4096 positions"):
        Pipeline(settings(chat_dir, max_positions=5000), plugins()).stage("llm")
    with pytest.raises(ConfigError, match="max_positions.*greater than or equal to 65"):
        Pipeline(settings(chat_dir, max_positions=20), plugins()).stage("llm")
    with pytest.raises(ConfigError, match="leaves 10 of the LM's 100 positions for the prompt"):
        Pipeline(settings(chat_dir, max_positions=100, max_new_tokens=90), plugins()).stage("llm")


def test_a_backend_without_causal_lm_is_refused_before_loading(chat_dir):
    s = settings(chat_dir).model_copy(update={"backends": {"llm": "text-only"}})
    with pytest.raises(CsmError, match="needs causal_lm engines, which backend 'text-only' does not provide"):
        Pipeline(s, plugins(TextOnly())).stage("llm")


def test_the_stage_names_the_backends_that_have_a_causal_lm_engine(chat_dir):
    registry = Registry.collect(plugins(TextOnly()))
    context = StageContext("llm", settings(chat_dir), registry, backend=registry.backend("text-only"),
                           log=logging.getLogger("csm.test"))
    with pytest.raises(BackendUnavailable, match="'text-only' has no causal_lm engine.*that have one: pytorch"):
        TransformersReplyModel(context)
