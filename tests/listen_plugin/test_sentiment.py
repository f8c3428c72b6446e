"""The sentiment analyzer: settings validation, token statistics, rules, plug-in classifiers, real speech."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

# Submodules, not the package: with pytest's default import mode the test folder tests/csm_listen
# (on sys.path through tests/conftest.py) shadows the package name as a namespace package.
from csm_listen.prosody import ProsodyFeatures
from csm_listen.sentiment import (
    EmotionClassifier,
    EmotionDecision,
    RuleBasedClassifier,
    RuleThresholds,
    Sentiment,
    SentimentAnalyzer,
    SentimentSettings,
)
from csm_listen.token_stats import TokenStatistics, token_statistics

# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"sample_fraction": 0.0}, "sample_fraction", "greater than 0"),
        ({"sample_fraction": 1.5}, "sample_fraction", "less than or equal to 1"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"emotions": ()}, "emotions", "at least one emotion"),
        ({"emotions": ("happy", "happy")}, "emotions", "duplicate"),
        ({"emotions": ("happy", "smug")}, "smug", "choose from"),
        ({"prototypes": {"smug": (0.2, 1.5)}}, "prototypes", "[-1, 1]"),
        ({"thresholds": {"arousal_weights": {"loudness": 1.0}}}, "arousal_weights", "loudness"),
        ({"thresholds": {"level_scale_db": 0}}, "level_scale_db", "greater than 0"),
        ({"prosody": {"f0_min_hz": 300, "f0_max_hz": 200}}, "prosody", "f0_min_hz"),
        ({"amortise": True}, "amortise", "Extra inputs"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field, message):
    with pytest.raises(ValidationError) as info:
        SentimentSettings(**kwargs)
    text = str(info.value)
    assert field in text and message in text, text


def test_custom_emotion_needs_and_accepts_a_prototype():
    settings = SentimentSettings(emotions=("neutral", "tired"), prototypes={"tired": (-0.8, -0.1)})
    assert settings.prototype_map() == {"neutral": (0.0, 0.0), "tired": (-0.8, -0.1)}


# --- token statistics ------------------------------------------------------------------------------


def test_token_statistics_of_known_code_patterns():
    frames = 64
    codes = np.zeros((32, frames), np.int64)
    codes[0] = np.arange(frames) % 2  # semantic: alternates 0, 1 -> 1 bit, changes every frame
    codes[1:] = np.random.default_rng(0).integers(0, 2048, (31, frames))
    stats = token_statistics(codes)
    assert stats.num_codebooks == 32 and stats.num_frames == frames
    assert stats.duration_s == pytest.approx(frames / 12.5)
    assert stats.semantic.entropy_bits == pytest.approx(1.0)
    assert stats.semantic.normalized_entropy == pytest.approx(1.0 / 6.0)  # log2(64) = 6
    assert stats.semantic.change_rate == 1.0
    assert stats.semantic.distinct_ratio == pytest.approx(2 / frames)
    assert stats.semantic_changes_per_s == pytest.approx(12.5)
    # 64 uniform draws from 2048 codes are almost all distinct: entropy near log2(64).
    assert stats.acoustic_mean.normalized_entropy > 0.95
    assert stats.acoustic_mean.change_rate > 0.99


def test_token_statistics_of_constant_codes_and_a_single_frame():
    held = token_statistics(np.full((32, 10), 7))
    assert held.semantic.entropy_bits == 0.0 and held.semantic.change_rate == 0.0
    assert held.acoustic_mean.distinct_ratio == pytest.approx(0.1)
    one = token_statistics(np.zeros((32, 1), np.int32))
    assert one.semantic.change_rate is None and one.semantic_changes_per_s is None
    assert one.semantic.normalized_entropy == 0.0
    assert token_statistics(np.zeros((1, 5), np.int32)).acoustic_mean is None


@pytest.mark.parametrize(
    ("codes", "error", "match"),
    [
        (np.zeros((1, 32, 10), np.int64), ValueError, r"codes\[0\]"),
        (np.zeros((32, 10), np.float32), TypeError, "integers"),
        (np.full((32, 10), 2048), ValueError, r"\[0, 2048\)"),
        (np.full((32, 10), -1), ValueError, r"\[0, 2048\)"),
        (np.zeros((32, 0), np.int64), ValueError, "at least one"),
    ],
)
def test_bad_codes_raise_a_clear_error(codes, error, match):
    with pytest.raises(error, match=match):
        token_statistics(codes)


# --- rules without espeak --------------------------------------------------------------------------


def test_silence_is_neutral_with_zero_confidence():
    s = SentimentAnalyzer().analyze(np.zeros(16_000, np.float32), 16_000)
    assert s.label in ("neutral", "calm")
    assert s.rule == "no_speech" and s.confidence == 0.0
    assert s.prosody.f0_median_hz is None


def test_silence_label_is_the_configured_emotion_nearest_the_origin():
    s = SentimentAnalyzer(SentimentSettings(emotions=("excited", "calm", "angry"))).analyze(
        np.zeros(8_000, np.float32), 8_000
    )
    assert s.label == "calm"  # |(-0.5, 0.3)| is the smallest of the three prototypes


def test_very_short_input_has_low_confidence(tone):
    s = SentimentAnalyzer().analyze(tone(200.0, 0.05, 24_000), 24_000)
    assert s.rule == "nearest_prototype"
    assert s.confidence <= 0.06  # evidence = 0.06 s of speaking time / min_speech_s (1 s)
    assert s.prosody.f0_median_hz == pytest.approx(200.0, rel=0.01)


def _features(**overrides) -> ProsodyFeatures:
    base = dict(
        duration_s=3.0, rms_dbfs=-27.0, active_rms_dbfs=-26.0, rms_std_db=6.0, f0_median_hz=140.0,
        f0_std_semitones=2.0, voiced_ratio=0.5, syllable_count=13, syllable_rate_hz=4.5,
        speaking_time_s=2.9, pause_count=0, pause_total_s=0.0, pause_mean_s=None, pause_ratio=0.0,
        clipping_ratio=0.0, frames_total=150, frames_speech=140, frames_pitch_analyzed=140, frames_voiced=70,
    )
    return ProsodyFeatures(**{**base, **overrides})


@pytest.mark.parametrize(
    ("feature", "low", "high"),
    [("active_rms_dbfs", -40.0, -15.0), ("syllable_rate_hz", 2.5, 7.0), ("f0_std_semitones", 0.5, 5.0),
     ("f0_median_hz", 90.0, 250.0)],
)
def test_arousal_rises_with_each_arousal_feature(feature, low, high):
    rules = RuleBasedClassifier()
    emotions = SentimentSettings().emotions
    lo = rules.classify(_features(**{feature: low}), None, emotions)
    hi = rules.classify(_features(**{feature: high}), None, emotions)
    assert hi.arousal > lo.arousal


def test_typical_features_are_neutral_and_extremes_reach_the_corners():
    rules, emotions = RuleBasedClassifier(), SentimentSettings().emotions
    assert rules.classify(_features(), None, emotions).label == "neutral"
    lively = _features(active_rms_dbfs=-20.0, syllable_rate_hz=6.5, f0_std_semitones=4.5, f0_median_hz=220.0)
    assert rules.classify(lively, None, emotions).label == "excited"
    flat = _features(active_rms_dbfs=-36.0, syllable_rate_hz=3.0, f0_std_semitones=0.8, f0_median_hz=95.0)
    assert rules.classify(flat, None, emotions).label == "sad"
    shouted = _features(active_rms_dbfs=-8.0, syllable_rate_hz=5.5, f0_std_semitones=1.0, f0_median_hz=150.0)
    assert rules.classify(shouted, None, emotions).label == "angry"


def test_missing_pitch_drops_pitch_terms_and_lowers_confidence():
    rules, emotions = RuleBasedClassifier(), SentimentSettings().emotions
    with_pitch = rules.classify(_features(active_rms_dbfs=-18.0), None, emotions)
    without = rules.classify(_features(active_rms_dbfs=-18.0, f0_median_hz=None, f0_std_semitones=None), None, emotions)
    assert set(without.scores) == {"level", "rate"}
    assert without.arousal == pytest.approx(math.tanh((0.4 * 1.0 + 0.25 * 0.0) / 0.65))
    assert without.confidence < with_pitch.confidence
    assert "no voiced frames" in without.rationale


def test_clipping_halves_confidence_and_is_explained():
    rules, emotions = RuleBasedClassifier(), SentimentSettings().emotions
    clean = rules.classify(_features(), None, emotions)
    clipped = rules.classify(_features(clipping_ratio=0.2), None, emotions)
    assert clipped.confidence == pytest.approx(0.5 * clean.confidence)
    assert "clipping" in clipped.rationale


def test_thresholds_move_the_decision():
    emotions = SentimentSettings().emotions
    f = _features(active_rms_dbfs=-20.0)
    default = RuleBasedClassifier().classify(f, None, emotions)
    loud_room = RuleBasedClassifier(RuleThresholds(level_ref_dbfs=-14.0)).classify(f, None, emotions)
    assert loud_room.arousal < default.arousal


# --- the classifier protocol -----------------------------------------------------------------------


class FixedClassifier:
    """A stand-in for a learned model: any object with ``name`` and ``classify``."""

    name = "fixed"

    def __init__(self, label: str, arousal: float = 0.1):
        self.label, self.arousal = label, arousal
        self.seen: list[tuple[ProsodyFeatures, TokenStatistics | None]] = []

    def classify(self, prosody, tokens, emotions: Sequence[str]) -> EmotionDecision:
        self.seen.append((prosody, tokens))
        return EmotionDecision(self.label, self.arousal, 0.0, 0.9, "model", "learned")


def test_a_plugged_in_classifier_replaces_the_rules(tone):
    classifier = FixedClassifier("happy")
    assert isinstance(classifier, EmotionClassifier) and isinstance(RuleBasedClassifier(), EmotionClassifier)
    codes = np.random.default_rng(1).integers(0, 2048, (32, 13))
    s = SentimentAnalyzer(classifier=classifier).analyze(tone(150.0, 1.0, 24_000), 24_000, codes=codes)
    assert (s.label, s.classifier, s.rule) == ("happy", "fixed", "model")
    prosody, tokens = classifier.seen[0]
    assert prosody is s.prosody and tokens is s.tokens and tokens.num_frames == 13


@pytest.mark.parametrize(("label", "arousal", "match"), [("smug", 0.0, "smug"), ("happy", 1.5, "arousal=1.5")])
def test_an_invalid_decision_from_a_plugged_in_classifier_is_refused(tone, label, arousal, match):
    analyzer = SentimentAnalyzer(classifier=FixedClassifier(label, arousal))
    with pytest.raises(ValueError, match=rf"classifier 'fixed'.*{match}"):
        analyzer.analyze(tone(150.0, 0.5, 16_000), 16_000)


@pytest.mark.parametrize(
    ("pcm", "match"),
    [(np.zeros(0, np.float32), "empty"), (np.full(1600, np.nan, np.float32), "non-finite")],
)
def test_analyzer_refuses_empty_and_nan_input(pcm, match):
    with pytest.raises(ValueError, match=match):
        SentimentAnalyzer().analyze(pcm, 16_000)


def test_to_dict_is_strict_json(tone):
    codes = np.random.default_rng(2).integers(0, 2048, (32, 25))
    for pcm in (tone(120.0, 2.0, 24_000), np.zeros(24_000, np.float32)):
        s = SentimentAnalyzer().analyze(pcm, 24_000, codes=codes)
        d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
        assert d["label"] == s.label and d["prosody"]["duration_s"] == s.prosody.duration_s
        assert d["tokens"]["semantic"]["entropy_bits"] == s.tokens.semantic.entropy_bits
        assert isinstance(s, Sentiment)


# --- real speech (espeak-ng) -----------------------------------------------------------------------


@pytest.mark.espeak
@pytest.mark.parametrize("amortize", [False, True])
def test_arousal_is_higher_for_fast_high_loud_speech(espeak_clips, amortize):
    analyzer = SentimentAnalyzer(SentimentSettings(amortize=amortize))
    for key in ("fox", "thanks"):
        calm = analyzer.analyze(espeak_clips[(key, "calm")].pcm, espeak_clips[(key, "calm")].sample_rate)
        aroused = analyzer.analyze(espeak_clips[(key, "aroused")].pcm, espeak_clips[(key, "aroused")].sample_rate)
        assert aroused.arousal > calm.arousal + 0.5
        assert calm.arousal < 0 < aroused.arousal
        assert calm.amortized is aroused.amortized is amortize
        if amortize:
            assert calm.prosody.frames_pitch_analyzed < calm.prosody.frames_speech / 8


@pytest.mark.espeak
def test_espeak_labels_come_from_the_configured_set(espeak_clips):
    analyzer = SentimentAnalyzer(SentimentSettings(emotions=("calm", "excited")))
    labels = {
        style: analyzer.analyze(espeak_clips[("fox", style)].pcm, espeak_clips[("fox", style)].sample_rate).label
        for style in ("calm", "aroused")
    }
    assert labels == {"calm": "calm", "aroused": "excited"}


@pytest.mark.espeak
def test_espeak_clipping_is_reported_and_lowers_confidence(aroused_clip):
    analyzer = SentimentAnalyzer()
    clipped = analyzer.analyze(np.clip(aroused_clip.pcm * 8.0, -1, 1), aroused_clip.sample_rate)
    assert clipped.prosody.clipping_ratio > 0.1
    assert "clipping" in clipped.rationale
    assert clipped.confidence <= 0.5
