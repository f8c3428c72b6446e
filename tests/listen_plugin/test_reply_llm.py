"""The ``transformers`` llm stage on a random tiny Llama-style chat model written with ``save_pretrained``.

Random weights do not answer in JSON: the end-to-end tests assert exactly that (the reply falls
back, says why, and still carries a configured emotion), plus determinism, limits and loading.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest

from csm_core.config import Settings
from csm_core.errors import ConfigError
from csm_core.plugins import Plugins
from csm_core.records import StageContext
from csm_core.registry import Registry
from csm_core.stages import Reply, ReplyRequest, Segment
from csm_listen.model_sources import ModelNotFound, NotAModel
from csm_listen.reply_llm import TransformersReplyModel
from csm_listen.sentiment import SentimentAnalyzer
from csm_listen.tiny_models import write_tiny_chat_lm

EMOTIONS = ("happy", "calm", "excited", "sad", "angry", "neutral")
FAST = {"transformers": {"max_new_tokens": 24}}


def make(settings: Settings) -> TransformersReplyModel:
    registry = Registry.collect(Plugins.from_environment())
    return TransformersReplyModel(
        StageContext("llm", settings, registry=registry, backend=registry.backend("pytorch"))
    )


def tiny_settings(llm, options=FAST, **extra) -> Settings:
    return Settings(device="cpu", models={"llm": str(llm)}, options=options, **extra)


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory):
    return write_tiny_chat_lm(tmp_path_factory.mktemp("chat") / "tiny-chat", seed=5)


@pytest.fixture(scope="session")
def llm(chat_dir):
    return make(tiny_settings(chat_dir))


@pytest.fixture(scope="module")
def sentiment(tone):
    return SentimentAnalyzer().analyze(tone(200.0, 1.5, 16000, (1.0, 0.5)), 16000)


def request(transcript="How was your day?", sentiment=None, history=()) -> ReplyRequest:
    return ReplyRequest(transcript, sentiment, tuple(history), EMOTIONS)


def test_random_model_reply_falls_back_honestly(llm, sentiment):
    reply = llm.reply(request(sentiment=sentiment))
    assert isinstance(reply, Reply)
    assert reply.emotion in EMOTIONS
    assert reply.emotion == sentiment.label  # random weights emit no JSON: the emotion heard is used
    assert reply.fallback in ("the output holds no JSON object", "the output is empty; used the default text")
    assert reply.text.strip()


def test_replies_are_deterministic(llm, chat_dir):
    first = llm.reply(request())
    assert make(tiny_settings(chat_dir)).reply(request()).raw == first.raw
    assert llm.reply(request()) == first


def test_max_new_tokens_bounds_the_raw_output(chat_dir):
    short = make(tiny_settings(chat_dir, options={"transformers": {"max_new_tokens": 5}}))
    # one byte per token: five tokens decode to at most five characters
    assert len(short.reply(request()).raw) <= 5


def test_sampling_is_seeded(chat_dir):
    options = {"transformers": {"max_new_tokens": 16, "temperature": 1.5, "seed": 7}}
    a = make(tiny_settings(chat_dir, options=options)).reply(request()).raw
    b = make(tiny_settings(chat_dir, options=options)).reply(request()).raw
    assert a == b


def test_prompt_uses_the_chat_template_with_history_in_order(llm, sentiment):
    history = [Segment(1, "I adopted a cat."), Segment(0, "How lovely!"), Segment(1, "She is tiny.")]
    prompt = llm.prompt(request("What should I name her?", sentiment, history))
    assert prompt.startswith("<|system|>\n") and prompt.endswith("<|assistant|>\n")
    positions = [prompt.index(t) for t in ("I adopted a cat.", "<|assistant|>\nHow lovely!", "She is tiny.", "What should I name her?")]
    assert positions == sorted(positions)
    assert sentiment.label in prompt and "arousal" in prompt and '"emotion"' in prompt


def test_prompt_drops_the_oldest_turns_to_fit(chat_dir):
    # 4096 positions - 3200 new tokens leaves 896 prompt tokens (one per byte): room for a few turns
    tight = make(tiny_settings(chat_dir, options={"transformers": {"max_new_tokens": 3200}}))
    history = [Segment(i % 2, f"turn {i}: " + "x" * 60) for i in range(12)]
    prompt = tight.prompt(request("newest question", history=history))
    assert len(tight.tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 896
    assert "turn 0:" not in prompt and "turn 11:" in prompt and "newest question" in prompt


def test_preset_writes_the_tiny_chat_model_once(tmp_path):
    settings = Settings(device="cpu", models={"preset": "tiny"}, cache_dir=tmp_path, options=FAST)
    model = make(settings)
    weights = tmp_path / "presets" / "chat-lm-tiny" / "model.safetensors"
    assert model.model_dir == weights.parent and weights.is_file()
    stamp = weights.stat().st_mtime_ns
    assert make(settings).reply(request()) == model.reply(request())
    assert weights.stat().st_mtime_ns == stamp


def test_model_from_a_fake_hugging_face_cache(chat_dir, llm, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--someorg--chat-fake"
    shutil.copytree(chat_dir, repo / "snapshots" / "feedbeef")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("feedbeef")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = make(tiny_settings("someorg/chat-fake"))
    assert cached.model_dir == repo / "snapshots" / "feedbeef"
    assert cached.reply(request()) == llm.reply(request())


def test_missing_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound, match=r"models.llm.*huggingface-cli download nobody/no-llm.*--preset tiny"):
        make(tiny_settings("nobody/no-llm"))
    with pytest.raises(ModelNotFound, match="does not exist"):
        make(tiny_settings(tmp_path / "missing" / "dir"))
    with pytest.raises(ModelNotFound, match="set models.llm"):
        make(Settings(device="cpu"))


def test_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(NotAModel, match="found: nothing"):
        make(tiny_settings(tmp_path))


def test_a_checkpoint_transformers_cannot_load(tmp_path, chat_dir):
    broken = tmp_path / "broken"
    shutil.copytree(chat_dir, broken)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(NotAModel, match="does not load as a causal language model"):
        make(tiny_settings(broken))


def test_bad_options_are_config_errors(chat_dir):
    with pytest.raises(ConfigError, match="(?s)options.transformers.*max_new_tokens"):
        make(tiny_settings(chat_dir, options={"transformers": {"max_new_tokens": 0}}))
    with pytest.raises(ConfigError, match="leaves"):
        make(tiny_settings(chat_dir, options={"transformers": {"max_new_tokens": 4090}}))


def test_reply_passes_the_cache_under_the_name_transformers_takes(chat_dir, sentiment):
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` and warns (FutureWarning) on
    each call with the old name: the engine names its DynamicCache the way the installed release does."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        reply = make(tiny_settings(chat_dir)).reply(request(sentiment=sentiment))
    assert reply.emotion in EMOTIONS and reply.raw is not None


@pytest.mark.slow  # a fresh csmctl loads every plugin and the tiny models: ~5-15 s on 2 busy cores
def test_csmctl_run_prints_no_deprecation_warning(tmp_path):
    """The whole ``run`` path in a fresh interpreter, FutureWarning an error; transformers also *logs*
    the old cache name once per process, so stderr is read too."""
    environ = {**os.environ, "NO_COLOR": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-m", "csm_core.cli", "run", "--text", "hi", "--preset", "tiny",
         "-m", "2", "--device", "cpu", "-o", str(tmp_path / "reply.wav")],
        capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "reply.wav").is_file()
    # FutureWarning is an error above; transformers' own log line for the old name reads
    # "`past_key_values`/`cache_params` are deprecated. Use `cache` instead."
    assert "FutureWarning" not in done.stderr and "past_key_values" not in done.stderr, done.stderr
