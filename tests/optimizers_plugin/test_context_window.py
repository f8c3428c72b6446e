"""The ``context-window`` optimizer on the real tiny CSM: quality gate, prompt bound, on/off by config."""

from __future__ import annotations

import numpy as np
import pytest

from csm_core import hookimpl
from csm_core.config import Settings
from csm_core.context_policy import context_for_turn, segment_cost
from csm_core.errors import ConfigError
from csm_core.generation.prompt import build_prompt
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins
from csm_core.quality import code_agreement
from csm_core.registry import Registry
from csm_core.stages import Segment
from csm_optimizers import context_window

MAX_FRAMES = 4


class OptimizerRecords:
    @hookimpl
    def register_optimizers(self, register):
        register(context_window.OPTIMIZER)


def make_plugins() -> Plugins:
    plugins = Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,optimizers"})
    if context_window.OPTIMIZER.name not in Registry.collect(plugins).optimizers:
        plugins.register(OptimizerRecords(), name="test-context-window-record")
    return plugins


def settings(on: bool, budget: int = 1024, keep_text: bool = True) -> Settings:
    return Settings(
        device="cpu", models={"preset": "tiny"},
        generation={"max_new_frames": MAX_FRAMES, "temperature": 0.0, "seed": 0},
        optimizers=["context-window"] if on else [],
        options={"context-window": {"budget": budget, "keep_text_of_dropped": keep_text}},
    )


@pytest.fixture(scope="module")
def tts():
    with Pipeline(settings(False), make_plugins()) as pipeline:
        yield pipeline, pipeline.stage("tts")


@pytest.fixture(scope="module")
def history(tts):
    """Six earlier turns with codes the tiny codec can decode (30 frames each: 59 positions)."""
    _, stage = tts
    rng = np.random.default_rng(0)
    k = stage.args.num_codebooks
    return [Segment(i % 2, f"Earlier turn number {i}.", rng.integers(0, 2048, (k, 30))) for i in range(6)]


def speak(pipeline, context) -> np.ndarray:
    return pipeline.speak("What comes next?", context=tuple(context)).reply_codes


def prompt_positions(stage, context) -> int:
    segments = list(context)
    prompt = build_prompt(segments, 0, "What comes next?", stage.tokenizer, num_codebooks=stage.args.num_codebooks,
                          max_frames=MAX_FRAMES, max_positions=stage.engines.backbone.max_positions)
    return len(prompt)


def effective(s: Settings) -> Settings:
    """The settings a pipeline runs with: the optimizers' ``configure`` overrides applied."""
    with Pipeline(s, make_plugins()) as pipeline:
        return pipeline.settings


def choose(stage, history, s: Settings):
    user = Segment(1, "And you?", None)
    return context_for_turn(history, None, user, effective(s), speaker=0, text="What comes next?",
                            max_positions=stage.engines.backbone.max_positions)


@pytest.mark.slow  # builds the tiny CSM and speaks three times (~15 s on 2 busy cores)
def test_quality_gate(tts, history):
    pipeline, stage = tts
    off, off_events = choose(stage, history, settings(False))
    full = prompt_positions(stage, off)
    assert len(off) == 7 and off_events == []  # everything fits the tiny model's window: nothing dropped
    reference = speak(pipeline, off)

    # a budget the conversation fits: the same context, identical codes
    fits, events = choose(stage, history, settings(True, budget=full))
    assert events == [] and len(fits) == len(off)
    assert code_agreement(reference, speak(pipeline, fits)) == 1.0

    # a smaller budget: the prompt is bounded by it, the newest turns keep their audio, the user's
    # turn is kept, older turns are text only; the codes may differ (stated, not bounded: random weights)
    budget = 200  # 34 for this turn, two turns with audio (118), one as text (28), not a second (28)
    small, events = choose(stage, history, settings(True, budget=budget))
    positions = prompt_positions(stage, small)
    assert positions <= budget < full
    cost = segment_cost()
    assert positions == sum(cost(s) for s in small) + cost(Segment(0, "What comes next?"))  # cost model exact here
    assert len(small) == 4 and small[-1].text == "And you?" and small[1] is history[4] and small[2] is history[5]
    assert (small[0].speaker, small[0].text, small[0].codes) == (history[3].speaker, history[3].text, None)
    assert any("text only" in e for e in events)
    codes = speak(pipeline, small)
    assert codes.shape[0] == reference.shape[0] and 0.0 <= code_agreement(reference, codes) <= 1.0

    # without keep_text_of_dropped the older turns go entirely
    dropped, events = choose(stage, history, settings(True, budget=budget, keep_text=False))
    assert all(s.codes is not None for s in dropped[:-1]) and len(dropped) < len(small)
    assert any("dropped the" in e for e in events)


def test_switched_on_and_off_by_config():
    with Pipeline(settings(True, budget=300), make_plugins()) as on:
        assert on.plugins.manager.has_plugin("optimizer:context-window")
    with Pipeline(settings(False), make_plugins()) as off:
        assert not off.plugins.manager.has_plugin("optimizer:context-window")
    bad = settings(True).model_copy(update={"options": {"context-window": {"budget": -5}}})
    with pytest.raises(ConfigError, match=r"(?s)\[options.context-window\].*budget"):
        Pipeline(bad, make_plugins())
    bad = settings(True).model_copy(update={"options": {"context-window": {"bugdet": 5}}})
    with pytest.raises(ConfigError, match="bugdet"):
        Pipeline(bad, make_plugins())


def test_configure_sets_the_context_policy_settings():
    on = effective(settings(True, budget=300, keep_text=False))
    assert (on.context.budget_positions, on.context.keep_text_of_dropped, on.generation.trim_context) == (300, False, True)
    assert effective(settings(True)).context.keep_text_of_dropped is True  # the option's default
    switched_off = settings(True).model_copy(update={"generation": Settings().generation.model_copy(
        update={"trim_context": False})})
    assert effective(switched_off).generation.trim_context is True  # the policy always applies with it on
    off = effective(settings(False))  # the options table alone changes nothing
    assert (off.context.budget_positions, off.context.keep_text_of_dropped) == (None, False)
