"""The ``amortized-analysis`` optimizer: switched on by config it makes the prosody sentiment stage
amortize its pitch analysis, within the bound its docstring states, and leaves the rest exact."""

from __future__ import annotations

import numpy as np
import pytest

from csm_core.audio import Audio
from csm_core.config import Settings
from csm_core.errors import ConfigError
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins

RATE = 24000
SEEDS = range(20)
EXACT_FEATURES = ("rms_dbfs", "active_rms_dbfs", "syllable_count", "syllable_rate_hz", "speaking_time_s",
                  "pause_count", "pause_ratio", "clipping_ratio", "frames_speech")


def voiced_speech_like(seconds: float = 5.0, rate: int = RATE) -> np.ndarray:
    """A voiced signal shaped like speech: five harmonics on an F0 gliding 110 -> 170 Hz with 5 Hz
    vibrato, 4 syllables per second (raised-cosine envelope), two 0.4 s pauses; peak 0.5, [N] float32."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110.0 + 60.0 * t / seconds + 6.0 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum((0.7 ** k) * np.sin((k + 1) * phase) for k in range(5))
    envelope = 0.55 - 0.45 * np.cos(2 * np.pi * 4.0 * t)
    for start in (1.6, 3.2):
        envelope[(t >= start) & (t < start + 0.4)] = 0.0
    x = voice * envelope
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def sentiment_stage(optimizers=(), **options):
    settings = Settings(optimizers=list(optimizers), options=options)
    pipeline = Pipeline(settings, Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,listen,optimizers"}))
    return pipeline, pipeline.stage("sentiment")


@pytest.fixture(scope="module")
def speech() -> Audio:
    return Audio(voiced_speech_like(), RATE)


def test_switching_it_on_by_config_amortizes_the_sentiment_stage(speech):
    pipeline, plain = sentiment_stage()
    assert pipeline.settings.options.get("prosody", {}).get("amortize") is not True
    assert plain.analyze(speech, None).amortized is False

    pipeline, amortized = sentiment_stage(["amortized-analysis"])
    assert pipeline.settings.options["prosody"] == {"amortize": True, "sample_fraction": 1 / 16}
    result = amortized.analyze(speech, None)
    assert result.amortized is True
    assert result.prosody.frames_pitch_analyzed < result.prosody.frames_speech / 4


def test_its_own_options_reach_the_prosody_stage_and_keep_the_others(speech):
    pipeline, stage = sentiment_stage(
        ["amortized-analysis"],
        **{"amortized-analysis": {"sample_fraction": 0.25, "min_sampled_frames": 3}, "prosody": {"seed": 7}},
    )
    assert pipeline.settings.options["prosody"] == {
        "seed": 7, "amortize": True, "sample_fraction": 0.25, "min_sampled_frames": 3,
    }
    prosody = stage.analyze(speech, None).prosody
    assert prosody.frames_pitch_analyzed == int(np.ceil(0.25 * prosody.frames_speech))


@pytest.mark.parametrize(
    ("options", "field"),
    [({"sample_fraction": 0}, "sample_fraction"), ({"fraction": 0.5}, "fraction: unknown setting"),
     ({"min_sampled_frames": 0}, "min_sampled_frames")],
)
def test_bad_options_are_named(options, field):
    with pytest.raises(ConfigError) as info:
        sentiment_stage(["amortized-analysis"], **{"amortized-analysis": options})
    assert "[options.amortized-analysis]" in str(info.value) and field in str(info.value)


def test_a_sentiment_stage_it_cannot_amortize_is_refused():
    settings = Settings(optimizers=["amortized-analysis"], stages={"sentiment": "loudness"})
    with pytest.raises(ConfigError, match=r"stages.sentiment = 'loudness'"):
        Pipeline(settings, Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,listen,optimizers"}))


def test_quality_bound_against_the_unoptimized_stage(speech):
    """The gate: over 20 seeds, median F0 within 12 % (mean 4 %) of the full analysis of the same clip,
    voiced ratio within 0.4, and every energy feature identical."""
    full = sentiment_stage(prosody={"seed": 0})[1].analyze(speech, None).prosody
    assert full.f0_median_hz is not None and 120 < full.f0_median_hz < 160  # the glide's middle
    errors = []
    for seed in SEEDS:
        amortized = sentiment_stage(["amortized-analysis"], prosody={"seed": seed})[1].analyze(speech, None).prosody
        assert amortized.frames_pitch_analyzed < full.frames_pitch_analyzed
        for name in EXACT_FEATURES:
            assert getattr(amortized, name) == getattr(full, name), name
        assert abs(amortized.voiced_ratio - full.voiced_ratio) <= 0.4
        errors.append(abs(amortized.f0_median_hz - full.f0_median_hz) / full.f0_median_hz)
    assert max(errors) <= 0.12, errors
    assert float(np.mean(errors)) <= 0.04, errors
    assert max(errors) > 0.0  # it is an estimate: some seed differs from the full analysis
