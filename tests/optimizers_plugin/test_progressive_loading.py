"""The ``progressive-loading`` optimizer and ``Pipeline.preload``: stages load in the background, in the
order a turn needs them, each exactly once, and a failed load surfaces where the stage is used."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from csm_core import hookimpl
from csm_core.config import Settings
from csm_core.errors import CsmError
from csm_core.pipeline import Pipeline, StageLoadError, load_order
from csm_core.plugins import Plugins
from csm_core.records import StageImpl
from csm_core.stages import SpeechChunk

RATE = 24000
SPF = 1920  # samples per 80 ms frame


class OneFrameTts:
    """Speaks one silent frame per word, with the word index as its codes."""

    sample_rate = RATE

    def speak(self, request):
        for index, _ in enumerate(request.text.split()):
            yield SpeechChunk(np.zeros(SPF, dtype=np.float32), np.full((32, 1), index, dtype=np.int64))


class GatedTtsPlugin:
    """Registers tts stages whose factories the test controls: ``gated`` blocks until ``gate`` is set,
    ``failing`` raises. ``builds`` counts the factory calls that returned a stage."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.builds = 0

    def _gated(self, context):
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        self.builds += 1
        return OneFrameTts()

    @staticmethod
    def _failing(context):
        raise FileNotFoundError("no weights at /nowhere/model.safetensors")

    @hookimpl
    def register_tts(self, register):
        register(StageImpl(name="gated", factory=self._gated))
        register(StageImpl(name="failing", factory=self._failing))


@pytest.fixture
def gated():
    return GatedTtsPlugin()


def make_pipeline(gated: GatedTtsPlugin, tts: str, optimizers=()) -> Pipeline:
    plugins = Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,optimizers"})
    plugins.register(gated, name="gated-tts")
    settings = Settings(stages={"tts": tts}, optimizers=list(optimizers))
    return Pipeline(settings, plugins)


def test_load_order_follows_the_turn_and_names_unknown_stages():
    assert load_order(["tts", "tokenizer", "llm", "tts"]) == ["tokenizer", "llm", "tts"]
    with pytest.raises(CsmError, match=r"unknown stage 'vocoder'.*tokenizer, transcriber"):
        load_order(["tts", "vocoder"])


def test_optimizer_switches_loading_to_progressive_and_reports_it(gated):
    with make_pipeline(gated, "gated") as off:
        assert off.settings.loading == "eager"
    with make_pipeline(gated, "gated", ["progressive-loading"]) as on:
        assert on.settings.loading == "progressive"
        gated.gate.set()
        turn = on.speak("hello")
    assert "optimizer progressive-loading set loading = 'progressive'" in turn.metrics.events


def test_eager_preload_loads_before_returning(gated):
    gated.gate.set()
    with make_pipeline(gated, "gated") as pipeline:
        seconds = pipeline.preload(["tts"])
        assert pipeline.is_loaded("tts") and gated.builds == 1
        turn = pipeline.speak("one two")
    assert turn.metrics.startup_seconds == seconds
    assert turn.metrics.load_seconds == 0.0  # nothing left to load during the turn
    assert turn.reply_codes.shape == (32, 2)


def test_progressive_preload_returns_before_the_stage_is_loaded(gated):
    with make_pipeline(gated, "gated", ["progressive-loading"]) as pipeline:
        pipeline.preload(["tts"])
        assert gated.entered.wait(timeout=10)  # the background thread is inside the factory ...
        assert not pipeline.is_loaded("tts")  # ... and preload has already returned
        assert gated.builds == 0
        threading.Timer(0.2, gated.gate.set).start()  # the turn has to wait for the load
        turn = pipeline.speak("one two three")
        assert pipeline.is_loaded("tts")
    assert gated.builds == 1
    assert turn.reply_codes.shape == (32, 3)
    assert turn.metrics.startup_seconds is not None
    # the turn waited for the load, and time to first audio counts from the turn's start
    assert turn.metrics.load_seconds >= 0.15
    assert turn.metrics.time_to_first_audio_s >= turn.metrics.load_seconds


def test_second_turn_reports_no_startup_and_no_loading(gated):
    gated.gate.set()
    with make_pipeline(gated, "gated", ["progressive-loading"]) as pipeline:
        pipeline.preload(["tts"])
        pipeline.speak("first")
        second = pipeline.speak("second")
    assert second.metrics.startup_seconds is None
    assert second.metrics.load_seconds == 0.0


def test_a_stage_used_from_many_threads_is_built_once(gated):
    with make_pipeline(gated, "gated") as pipeline:
        results = []
        threads = [threading.Thread(target=lambda: results.append(pipeline.stage("tts"))) for _ in range(4)]
        for thread in threads:
            thread.start()
        assert gated.entered.wait(timeout=10)
        gated.gate.set()
        for thread in threads:
            thread.join(timeout=10)
    assert gated.builds == 1
    assert len(results) == 4 and all(stage is results[0] for stage in results)


def test_progressive_preload_of_a_loading_stage_does_not_load_it_again(gated):
    with make_pipeline(gated, "gated", ["progressive-loading"]) as pipeline:
        pipeline.preload(["tts"])
        pipeline.preload(["tts"])
        gated.gate.set()
        pipeline.stage("tts")
    assert gated.builds == 1


def test_background_load_error_surfaces_on_first_use_with_the_stage_named(gated):
    with make_pipeline(gated, "failing", ["progressive-loading"]) as pipeline:
        pipeline.preload(["tts"])  # returns: the error belongs to the first use
        with pytest.raises(StageLoadError, match=r"tts stage 'failing' failed to load.*no weights at") as info:
            pipeline.speak("hello")
        assert isinstance(info.value.__cause__, FileNotFoundError)
        assert info.value.stage == "tts"
        with pytest.raises(StageLoadError):  # the stage stays failed: no silent retry
            pipeline.stage("tts")


def test_eager_preload_raises_in_the_callers_thread(gated):
    with make_pipeline(gated, "failing") as pipeline:
        with pytest.raises(FileNotFoundError, match="no weights"):
            pipeline.preload(["tts"])


def test_preload_checks_names_before_anything_loads(gated):
    with make_pipeline(gated, "gated", ["progressive-loading"]) as pipeline:
        with pytest.raises(CsmError, match="unknown stage 'speaker'"):
            pipeline.preload(["speaker"])
        assert not gated.entered.is_set()


@pytest.mark.slow
def test_progressive_and_eager_give_identical_codes():
    pytest.importorskip("torch")
    codes = {}
    for loading, optimizers in (("eager", []), ("progressive", ["progressive-loading"])):
        settings = Settings(
            models={"preset": "tiny"}, device="cpu", optimizers=optimizers,
            generation={"temperature": 0, "max_new_frames": 8},
        )
        with Pipeline(settings, Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,optimizers"})) as p:
            assert p.settings.loading == loading
            p.preload(["tts"])
            codes[loading] = p.speak("Loading in the background.").reply_codes
    assert codes["eager"].shape[1] > 0
    np.testing.assert_array_equal(codes["progressive"], codes["eager"])
