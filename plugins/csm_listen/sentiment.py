"""Sentiment of the user's speech: settings, the typed result, the rule-based classifier, the analyzer.

:class:`SentimentAnalyzer` extracts prosody (:mod:`csm_listen.prosody`) and, when Mimi codes are
given, token statistics (:mod:`csm_listen.token_stats`), then asks an :class:`EmotionClassifier`
for a label, arousal, valence and confidence. The default classifier, :class:`RuleBasedClassifier`,
is a set of **hand-written heuristics, not a trained or validated model**: it orders clips sensibly
on arousal (loud, fast, lively speech scores higher than quiet, slow, flat speech) and is weak on
valence, which prosody alone predicts poorly. A learned classifier replaces it by implementing the
protocol and being passed to the analyzer.

The rules (all thresholds in :class:`RuleThresholds`):

1. ``no_speech``: no frame is speech (silence, noise floor) -> the configured emotion nearest to
   (arousal 0, valence 0), arousal = valence = 0, confidence 0.
2. ``nearest_prototype``: otherwise, four scores, each ``(value - reference) / scale`` clipped to
   [-3, 3]:

   - ``level``       = active speech level (dBFS) vs ``level_ref_dbfs`` / ``level_scale_db``
   - ``rate``        = syllables per second of speaking time vs ``rate_ref_hz`` / ``rate_scale_hz``
   - ``pitch_var``   = F0 spread (semitones) vs ``pitch_var_ref_st`` / ``pitch_var_scale_st``
   - ``pitch_level`` = median F0 in semitones re ``f0_ref_hz``, / ``pitch_level_scale_st``
     (a speaker-independent reference: set ``f0_ref_hz`` to the speaker's own median when known)

   ``arousal = tanh(weighted mean of level, rate, pitch_var, pitch_level)`` with weights
   ``arousal_weights`` (louder, faster, livelier, higher = more aroused);
   ``valence = tanh(weighted mean of pitch_var, pitch_level, rate with valence_weights
   - loudness_penalty * max(0, level - loud_level_score))`` (lively, raised intonation = positive;
   flat, low, slow = negative; shouting beyond ``loud_level_score`` pushes towards negative).
   Pitch terms are left out (weights renormalised) when no frame is voiced.
   The label is the configured emotion whose (arousal, valence) prototype
   (:data:`EMOTION_PROTOTYPES`, overridable) is nearest.

Confidence (a heuristic in [0, 1], not a calibrated probability) =
``evidence * (0.5 + 0.5 * margin) * quality`` where ``evidence = min(1, speaking_time /
min_speech_s)`` (x ``no_pitch_factor`` without voiced frames), ``margin = (d2 - d1) / (d2 + d1)``
from the distances to the nearest and second-nearest prototype, and ``quality = clipping_factor``
when the clipping ratio exceeds ``max_clipping_ratio`` (level is then unreliable), else 1.

Very short input (e.g. 50 ms) is analysed, not refused: features come from the frames there are,
and the ``evidence`` term makes its confidence small (<= 0.06 for 50 ms with the defaults:
three 20 ms frames of speaking time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from csm_listen.prosody import ProsodyFeatures, ProsodySettings, extract_prosody
from csm_listen.token_stats import TokenStatistics, token_statistics

DEFAULT_EMOTIONS: tuple[str, ...] = ("neutral", "calm", "happy", "excited", "sad", "angry")

EMOTION_PROTOTYPES: dict[str, tuple[float, float]] = {
    # (arousal, valence), placed on Russell's circumplex of affect.
    "neutral": (0.0, 0.0),
    "calm": (-0.5, 0.3),
    "content": (-0.2, 0.5),
    "happy": (0.4, 0.6),
    "excited": (0.8, 0.4),
    "surprised": (0.7, 0.1),
    "angry": (0.7, -0.6),
    "fearful": (0.5, -0.4),
    "sad": (-0.5, -0.5),
    "bored": (-0.7, -0.2),
}
"""Built-in (arousal, valence) prototypes; ``SentimentSettings.prototypes`` adds or overrides."""


class RuleThresholds(BaseModel):
    """References, scales and weights of the rule-based classifier (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level_ref_dbfs: float = Field(-26.0, le=0, description="Typical active speech level (dBFS).")
    level_scale_db: float = Field(8.0, gt=0)
    rate_ref_hz: float = Field(4.5, gt=0, description="Typical articulation rate (syllables/s).")
    rate_scale_hz: float = Field(1.5, gt=0)
    pitch_var_ref_st: float = Field(2.0, ge=0, description="Typical F0 spread (semitones).")
    pitch_var_scale_st: float = Field(1.5, gt=0)
    f0_ref_hz: float = Field(140.0, gt=0, description="Reference F0 (Hz); the speaker's own median is best.")
    pitch_level_scale_st: float = Field(4.0, gt=0)
    arousal_weights: dict[str, float] = Field(
        default_factory=lambda: {"level": 0.4, "rate": 0.25, "pitch_var": 0.2, "pitch_level": 0.15}
    )
    valence_weights: dict[str, float] = Field(
        default_factory=lambda: {"pitch_var": 0.45, "pitch_level": 0.35, "rate": 0.2}
    )
    loud_level_score: float = Field(1.0, description="Level score above which loudness lowers valence.")
    loudness_penalty: float = Field(0.75, ge=0)
    min_speech_s: float = Field(1.0, gt=0, description="Speaking time that gives full evidence (s).")
    no_pitch_factor: float = Field(0.7, ge=0, le=1)
    max_clipping_ratio: float = Field(0.01, ge=0, le=1)
    clipping_factor: float = Field(0.5, ge=0, le=1)

    @field_validator("arousal_weights", "valence_weights")
    @classmethod
    def _check_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        known = {"level", "rate", "pitch_var", "pitch_level"}
        unknown = sorted(set(weights) - known)
        if unknown:
            raise ValueError(f"unknown score names {unknown}; choose from {sorted(known)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
        return weights


class SentimentSettings(BaseModel):
    """Configuration of :class:`SentimentAnalyzer`. Invalid values raise pydantic's
    ``ValidationError``, whose message names the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    emotions: tuple[str, ...] = Field(DEFAULT_EMOTIONS, description="Labels the classifier may return.")
    prototypes: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="(arousal, valence) per emotion, added to / overriding the built-ins."
    )
    amortize: bool = Field(False, description="Estimate pitch on a random sample of frames.")
    sample_fraction: float = Field(1 / 16, gt=0, le=1, description="Fraction of speech frames sampled.")
    min_sampled_frames: int = Field(8, ge=1, description="Floor on the sampled frame count.")
    seed: int = Field(0, ge=0, description="Seed of the frame sample (same input + seed = same result).")
    prosody: ProsodySettings = Field(default_factory=ProsodySettings)
    thresholds: RuleThresholds = Field(default_factory=RuleThresholds)

    @field_validator("emotions")
    @classmethod
    def _check_emotions(cls, emotions: tuple[str, ...]) -> tuple[str, ...]:
        if not emotions:
            raise ValueError("at least one emotion is needed")
        duplicates = sorted({e for e in emotions if emotions.count(e) > 1})
        if duplicates:
            raise ValueError(f"duplicate emotions {duplicates}")
        if any(not e.strip() for e in emotions):
            raise ValueError("emotion names must be non-empty")
        return emotions

    @field_validator("prototypes")
    @classmethod
    def _check_prototypes(cls, prototypes: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        bad = {k: v for k, v in prototypes.items() if not all(-1.0 <= c <= 1.0 for c in v)}
        if bad:
            raise ValueError(f"prototype (arousal, valence) must lie in [-1, 1], got {bad}")
        return prototypes

    @model_validator(mode="after")
    def _every_emotion_has_a_prototype(self) -> SentimentSettings:
        known = {**EMOTION_PROTOTYPES, **self.prototypes}
        missing = [e for e in self.emotions if e not in known]
        if missing:
            raise ValueError(
                f"emotions {missing} have no (arousal, valence) prototype: add them to 'prototypes' "
                f"or choose from {sorted(known)}"
            )
        return self

    def prototype_map(self) -> dict[str, tuple[float, float]]:
        """(arousal, valence) of each configured emotion."""
        known = {**EMOTION_PROTOTYPES, **self.prototypes}
        return {e: known[e] for e in self.emotions}


@dataclass(frozen=True)
class EmotionDecision:
    """What a classifier returns. ``arousal``/``valence`` in [-1, 1], ``confidence`` in [0, 1];
    ``rule`` names the rule (or model) that decided; ``scores`` are the intermediate values used."""

    label: str
    arousal: float
    valence: float
    confidence: float
    rule: str
    rationale: str
    scores: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class EmotionClassifier(Protocol):
    """Turns features into an emotion. Implement this to replace the rules with a learned model."""

    name: str

    def classify(
        self, prosody: ProsodyFeatures, tokens: TokenStatistics | None, emotions: Sequence[str]
    ) -> EmotionDecision:
        """Pick one of ``emotions`` for the clip described by ``prosody`` (and ``tokens`` if any)."""


@dataclass(frozen=True)
class Sentiment:
    """The sentiment of one clip: the decision, the features it rests on, and how it was computed."""

    label: str
    arousal: float
    valence: float
    confidence: float
    rule: str
    rationale: str
    scores: dict[str, float]
    classifier: str
    amortized: bool
    prosody: ProsodyFeatures
    tokens: TokenStatistics | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types only (no NaN/inf): ``json.dumps(s.to_dict(), allow_nan=False)`` works."""
        return asdict(self)


def _clipped(value: float) -> float:
    return float(np.clip(value, -3.0, 3.0))


class RuleBasedClassifier:
    """The transparent heuristics of the module docstring."""

    name = "rules"

    def __init__(
        self,
        thresholds: RuleThresholds | None = None,
        prototypes: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.thresholds = thresholds or RuleThresholds()
        self.prototypes = {**EMOTION_PROTOTYPES, **(prototypes or {})}

    def scores(self, p: ProsodyFeatures) -> dict[str, float]:
        """The normalised scores available for ``p`` (pitch scores only with voiced frames)."""
        t = self.thresholds
        out: dict[str, float] = {}
        if p.active_rms_dbfs is not None:
            out["level"] = _clipped((p.active_rms_dbfs - t.level_ref_dbfs) / t.level_scale_db)
        if p.syllable_rate_hz is not None:
            out["rate"] = _clipped((p.syllable_rate_hz - t.rate_ref_hz) / t.rate_scale_hz)
        if p.f0_std_semitones is not None:
            out["pitch_var"] = _clipped((p.f0_std_semitones - t.pitch_var_ref_st) / t.pitch_var_scale_st)
        if p.f0_median_hz is not None:
            semitones = 12.0 * math.log2(p.f0_median_hz / t.f0_ref_hz)
            out["pitch_level"] = _clipped(semitones / t.pitch_level_scale_st)
        return out

    @staticmethod
    def _weighted_mean(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
        used = {k: w for k, w in weights.items() if k in scores and w > 0}
        total = sum(used.values())
        return sum(scores[k] * w for k, w in used.items()) / total if total > 0 else 0.0

    def classify(
        self, prosody: ProsodyFeatures, tokens: TokenStatistics | None, emotions: Sequence[str]
    ) -> EmotionDecision:
        missing = [e for e in emotions if e not in self.prototypes]
        if missing:
            raise ValueError(f"emotions {missing} have no prototype; known: {sorted(self.prototypes)}")
        t = self.thresholds
        points = {e: np.asarray(self.prototypes[e], dtype=np.float64) for e in emotions}

        if not prosody.has_speech:
            label = min(points, key=lambda e: float(np.linalg.norm(points[e])))
            return EmotionDecision(
                label=label, arousal=0.0, valence=0.0, confidence=0.0, rule="no_speech",
                rationale=f"no speech above the silence floor in {prosody.duration_s:.2f} s; "
                f"'{label}' is the emotion nearest to arousal 0, valence 0",
            )

        s = self.scores(prosody)
        arousal = math.tanh(self._weighted_mean(s, t.arousal_weights))
        loud = max(0.0, s.get("level", 0.0) - t.loud_level_score)
        valence = math.tanh(self._weighted_mean(s, t.valence_weights) - t.loudness_penalty * loud)
        here = np.array([arousal, valence])
        ranked = sorted(points, key=lambda e: float(np.linalg.norm(points[e] - here)))
        label = ranked[0]
        d1 = float(np.linalg.norm(points[label] - here))
        d2 = float(np.linalg.norm(points[ranked[1]] - here)) if len(ranked) > 1 else math.inf
        margin = 1.0 if math.isinf(d2) else (d2 - d1) / (d2 + d1) if d2 + d1 > 0 else 0.0

        has_pitch = "pitch_var" in s or "pitch_level" in s
        evidence = min(1.0, prosody.speaking_time_s / t.min_speech_s) * (1.0 if has_pitch else t.no_pitch_factor)
        clipped = prosody.clipping_ratio > t.max_clipping_ratio
        quality = t.clipping_factor if clipped else 1.0
        confidence = float(np.clip(evidence * (0.5 + 0.5 * margin) * quality, 0.0, 1.0))

        notes = [] if has_pitch else ["no voiced frames: pitch left out"]
        if clipped:
            notes.append(f"clipping ratio {prosody.clipping_ratio:.3f} > {t.max_clipping_ratio}: level unreliable")
        score_text = ", ".join(f"{k}={v:+.2f}" for k, v in s.items())
        return EmotionDecision(
            label=label, arousal=float(arousal), valence=float(valence), confidence=confidence,
            rule="nearest_prototype",
            rationale=f"scores {score_text} -> arousal {arousal:+.2f}, valence {valence:+.2f}; "
            f"nearest prototype '{label}'" + (f" ({'; '.join(notes)})" if notes else ""),
            scores=s,
        )


def _check_decision(decision: EmotionDecision, emotions: Sequence[str], classifier: str) -> None:
    problems = []
    if decision.label not in emotions:
        problems.append(f"label {decision.label!r} is not one of {list(emotions)}")
    for name, lo in (("arousal", -1.0), ("valence", -1.0), ("confidence", 0.0)):
        value = getattr(decision, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= 1.0):
            problems.append(f"{name}={value!r} is outside [{lo:g}, 1]")
    if problems:
        raise ValueError(f"classifier {classifier!r} returned an invalid decision: {'; '.join(problems)}")


class SentimentAnalyzer:
    """Prosody + token statistics + classifier. Construct once, call :meth:`analyze` per turn."""

    def __init__(self, config: SentimentSettings | None = None, classifier: EmotionClassifier | None = None):
        self.config = config or SentimentSettings()
        self.classifier: EmotionClassifier = classifier or RuleBasedClassifier(
            self.config.thresholds, self.config.prototype_map()
        )

    def analyze(self, pcm: np.ndarray, sample_rate: int, codes: np.ndarray | None = None) -> Sentiment:
        """Sentiment of ``pcm`` [N] float mono in [-1, 1] at ``sample_rate`` Hz (>= 8000).

        ``codes`` [K, F] are the Mimi codes of the same audio when the tokenizer has run (they are
        summarised, never recomputed). Raises ``ValueError``/``TypeError`` naming the argument for
        empty, non-finite, multi-channel or integer PCM and malformed codes.
        """
        c = self.config
        prosody = extract_prosody(
            pcm,
            sample_rate,
            c.prosody,
            sample_fraction=c.sample_fraction if c.amortize else 1.0,
            seed=c.seed,
            min_sampled_frames=c.min_sampled_frames,
        )
        tokens = token_statistics(codes) if codes is not None else None
        decision = self.classifier.classify(prosody, tokens, c.emotions)
        _check_decision(decision, c.emotions, self.classifier.name)
        return Sentiment(
            label=decision.label,
            arousal=decision.arousal,
            valence=decision.valence,
            confidence=decision.confidence,
            rule=decision.rule,
            rationale=decision.rationale,
            scores=dict(decision.scores),
            classifier=self.classifier.name,
            amortized=c.amortize,
            prosody=prosody,
            tokens=tokens,
        )
