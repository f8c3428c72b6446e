"""Which stages run on which backend: one table for the pipeline's refusal and ``csmctl doctor --backend``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from csm_core import hookimpl
from csm_core.backend_coverage import missing_engines_message, stage_coverage
from csm_core.config import Settings
from csm_core.errors import BackendUnavailable, CsmError, UnknownNameError
from csm_core.pipeline import AUDIO_STAGES, Pipeline
from csm_core.plugins import Plugins
from csm_core.records import Backend, StageImpl
from csm_core.registry import Registry


def _never_built(context):
    raise AssertionError("nothing may load before the coverage check passes")


class ThreeBackends:
    """``full`` offers every engine, ``codec-only`` only the codec, ``absent`` cannot run here."""

    @hookimpl
    def register_backends(self, register):
        engines = {"codec": lambda m, c: m, "csm": lambda m, c: m, "causal_lm": lambda m, c: m}
        register(Backend(name="full", engines=engines, check=lambda: None))
        register(Backend(name="codec-only", engines={"codec": lambda m, c: m}, check=lambda: None))

        def absent():
            raise BackendUnavailable("the absent backend needs a runtime that is not installed")

        register(Backend(name="absent", engines=engines, check=absent))

    @hookimpl
    def register_tokenizers(self, register):
        register(StageImpl("codes", _never_built, components=("codec",)))

    @hookimpl
    def register_transcribers(self, register):
        register(StageImpl("ears", _never_built))

    @hookimpl
    def register_sentiment_analyzers(self, register):
        register(StageImpl("mood", _never_built))

    @hookimpl
    def register_llms(self, register):
        register(StageImpl("chat", _never_built, components=("causal_lm",)))

    @hookimpl
    def register_tts(self, register):
        register(StageImpl("voice", _never_built, components=("csm", "codec")))


STAGES = {"tokenizer": "codes", "transcriber": "ears", "sentiment": "mood", "llm": "chat", "tts": "voice"}


@pytest.fixture
def plugins():
    plugins = Plugins()
    plugins.register(ThreeBackends(), name="three-backends")
    return plugins


def table(plugins, on, **settings):
    """The coverage of an audio turn ``on`` one backend (None: the settings' own choice per stage)."""
    return {row.stage: row for row in stage_coverage(Registry.collect(plugins), Settings(stages=STAGES, **settings),
                                                     AUDIO_STAGES, backend=on)}


def test_each_stage_is_placed_and_the_reason_it_does_not_run_is_given(plugins):
    rows = table(plugins, "codec-only")
    assert {stage: row.status for stage, row in rows.items()} == {
        "tokenizer": "runs", "transcriber": "own runtime", "sentiment": "own runtime",
        "llm": "missing engines", "tts": "missing engines",
    }
    assert rows["llm"].reason() == ("needs causal_lm engines, which backend 'codec-only' does not provide; "
                                    "backends that do: absent, full")
    assert rows["tts"].missing == ("csm",) and rows["tokenizer"].runs_on_backend
    assert "declares no engines" in rows["transcriber"].reason() and not rows["transcriber"].runs_on_backend
    absent = table(plugins, "absent")
    assert absent["tts"].status == "backend unavailable" and "not installed" in absent["tts"].reason()
    assert all(row.status in ("runs", "own runtime") for row in table(plugins, "full").values())


def test_per_stage_backends_apply_unless_one_backend_is_asked_for(plugins):
    rows = table(plugins, None, backend="codec-only", backends={"llm": "full", "tts": "full"})
    assert [rows[s].backend for s in ("tokenizer", "llm", "tts")] == ["codec-only", "full", "full"]
    assert all(row.status in ("runs", "own runtime") for row in rows.values())
    with pytest.raises(UnknownNameError, match="unknown backend 'nope'"):
        table(plugins, "nope")


def test_the_pipeline_names_every_stage_that_cannot_run_in_one_message(plugins):
    settings = Settings(stages=STAGES, backend="codec-only")
    with pytest.raises(CsmError) as error:
        Pipeline(settings, plugins).turn(audio=None, text="hi")
    message = str(error.value)
    assert message.startswith("this turn cannot run on the chosen backend")
    assert "llm stage 'chat' needs causal_lm engines" in message and "tts stage 'voice' needs csm engines" in message
    assert 'backends.llm = "<name>", backends.tts = "<name>"' in message
    one = missing_engines_message(stage_coverage(Registry.collect(plugins), settings, ["llm"]))
    assert one.startswith("llm stage 'chat' needs causal_lm engines") and "only this stage there" in one


def test_csmctl_doctor_backend_prints_the_table_without_loading_anything():
    command = [sys.executable, "-m", "csm_core.cli", "doctor", "--backend", "onnxruntime", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {row["stage"]: row for row in json.loads(result.stdout)["stages"]}
    assert set(rows) == set(AUDIO_STAGES)
    assert rows["tts"]["backend"] == "onnxruntime" and rows["tts"]["status"] == "runs"
    assert rows["transcriber"]["backend"] == "onnxruntime" and rows["transcriber"]["status"] == "runs"  # speech_to_text
    assert rows["sentiment"]["status"] == "own runtime" and "declares no engines" in rows["sentiment"]["reason"]
    bad = subprocess.run([*command[:4], "--backend", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown backend 'nope'" in bad.stderr
