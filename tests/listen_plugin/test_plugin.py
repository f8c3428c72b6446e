"""The ``prosody`` sentiment stage as the pipeline builds it: entry point, config options, real speech."""

from __future__ import annotations

import pytest

from csm_core.audio import Audio
from csm_core.config import Settings
from csm_core.errors import ConfigError
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins


def pipeline(**settings) -> Pipeline:
    return Pipeline(Settings(**settings), Plugins.from_environment({"CSM_LOAD_PLUGINS": "listen,model,pytorch"}))


@pytest.mark.espeak
def test_prosody_stage_ranks_arousal_of_real_speech(calm_clip, aroused_clip):
    stage = pipeline().stage("sentiment")
    calm = stage.analyze(Audio(calm_clip.pcm, calm_clip.sample_rate), None)
    aroused = stage.analyze(Audio(aroused_clip.pcm, aroused_clip.sample_rate), None)
    assert aroused.arousal > calm.arousal
    assert aroused.prosody.syllable_rate_hz > calm.prosody.syllable_rate_hz
    assert calm.label in Settings().emotions and calm.to_dict()["label"] == calm.label


@pytest.mark.espeak
def test_options_reach_the_analyzer(calm_clip):
    stage = pipeline(options={"prosody": {"amortize": True, "seed": 3}}).stage("sentiment")
    assert stage.analyze(Audio(calm_clip.pcm, calm_clip.sample_rate), None).amortized is True


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match=r"\[options.prosody\]"):
        pipeline(options={"prosody": {"sample_fraction": 7}}).stage("sentiment")
