"""Prosody features of a speech waveform: level, pitch, speaking rate, pauses, voicing, clipping.

Pipeline (all numpy; ``soxr`` for resampling):

1. **Validate** the input: 1-D float PCM in [-1, 1] nominal, finite, non-empty, ``sample_rate >= 8000``
   Hz (telephone band is the lowest supported rate). Any length >= 1 sample is accepted; clips
   shorter than one analysis frame are zero-padded to one frame, and the classifier lowers its
   confidence for short speech (see :mod:`csm_listen.sentiment`).
2. **Clipping** is measured on the input samples before resampling (resampling moves peaks):
   the fraction of samples with ``|x| >= clip_level``.
3. **Resample** to ``ANALYSIS_RATE`` (16 kHz) with soxr ("HQ"): one frame geometry for every input
   rate, and YIN cost is fixed per second of audio. 8 kHz input is upsampled (no content above
   4 kHz, which none of these features needs).
4. **Energy** of 10 ms blocks -> level in dBFS (full-scale sine = -3 dBFS, full-scale square = 0).
   An *analysis frame* is 20 ms (two blocks). A frame is *speech* when its level is within
   ``speech_range_db`` of the loud end of the clip (95th percentile of frame levels) and above
   ``silence_floor_dbfs``.
5. **Pauses** are runs of non-speech frames of at least ``min_pause_s`` between the first and last
   speech frame (leading/trailing silence is not a pause). Shorter gaps count as speech.
   ``pause_ratio`` = pause time / time from first speech onset to last speech offset.
6. **Speaking rate** = syllable nuclei per second of *speaking time* (onset-to-offset span minus
   pauses; an articulation rate). Nuclei are peaks of the 10 ms energy envelope (smoothed with a
   50 ms Hann window) inside speech, separated from the neighbouring nucleus by a dip of at least
   ``syllable_dip_db`` on both sides (after de Jong & Wempe 2009, without their voicing check, so
   that the rate does not depend on the amortised pitch track).
7. **Pitch** by YIN (:mod:`csm_listen.pitch`) on speech frames, each a 42 ms segment (25 ms
   integration window + longest period) starting at the frame. A frame is *voiced* when YIN finds a
   dip below ``yin_threshold``. Reported: median F0 of voiced frames (Hz) and its robust spread in
   semitones (IQR / 1.349 of ``12 log2(f0 / median)``, insensitive to the odd octave error).
   ``voiced_ratio`` = voiced frames / all frames.

Compute amortization: energy (steps 4-6) is one O(N) pass and needs the whole contiguous envelope,
so it is always computed on every frame. YIN (step 7, a 1024-point FFT correlation per frame) is
where the time goes: with ``sample_fraction < 1`` it runs on a stratified random sample of the speech
frames (:func:`pitch_frame_sample`: ``ceil(fraction * speech_frames)`` frames, at least
``min_sampled_frames``, at most all, one per equal stratum, drawn with
``numpy.random.default_rng(seed)``), so the same input and seed give the same result. Only
``f0_median_hz``, ``f0_std_semitones`` and ``voiced_ratio`` are estimates in that mode; the level,
rate, pause and clipping features are exact.

``f0_std_semitones`` is too noisy at 1/16 to trust per clip (up to 2 semitones off); use a larger
fraction where pitch variation matters. The measured errors and the time saved are in
docs/optimizers.md (amortized-analysis); ``tests/listen_plugin/test_prosody.py::test_amortized_error_is_bounded``
enforces median-F0 error <= 12 % (mean <= 4 %), voiced-ratio error <= 0.4 (mean <= 0.12), and exact
energy features.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from csm_listen.pitch import YinLags, yin

ANALYSIS_RATE = 16_000
"""Sample rate (Hz) all analysis runs at; inputs are resampled to it."""
BLOCK_S = 0.010
"""Energy block (s): resolution of the energy envelope used for syllable nuclei."""
FRAME_S = 0.020
"""Analysis frame (s): the unit of speech/pause decisions, pitch, and amortized sampling."""
MIN_SAMPLE_RATE = 8_000
"""Lowest accepted input rate (Hz)."""
LEVEL_FLOOR_DBFS = -120.0
"""Level reported for digital silence instead of -inf."""


class ProsodySettings(BaseModel):
    """Parameters of prosody extraction. Defaults suit adult speech."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    f0_min_hz: float = Field(60.0, gt=0, description="Lowest F0 searched (Hz).")
    f0_max_hz: float = Field(500.0, gt=0, le=2000, description="Highest F0 searched (Hz).")
    yin_threshold: float = Field(0.2, gt=0, lt=1, description="YIN absolute threshold on d'.")
    yin_window_s: float = Field(0.025, gt=0, le=0.1, description="YIN integration window (s).")
    speech_range_db: float = Field(30.0, gt=0, description="Speech = frames within this many dB of the loud end.")
    silence_floor_dbfs: float = Field(-60.0, lt=0, description="Frames below this level are never speech.")
    min_pause_s: float = Field(0.2, gt=0, description="Shortest non-speech gap counted as a pause (s).")
    syllable_dip_db: float = Field(2.0, gt=0, description="Dip separating two syllable nuclei (dB).")
    clip_level: float = Field(0.99, gt=0, le=1, description="|x| at or above this counts as clipped.")

    @model_validator(mode="after")
    def _check_pitch_range(self) -> ProsodySettings:
        if self.f0_min_hz >= self.f0_max_hz:
            raise ValueError(f"f0_min_hz ({self.f0_min_hz}) must be below f0_max_hz ({self.f0_max_hz})")
        if self.yin_window_s < 1.0 / self.f0_min_hz:
            raise ValueError(
                f"yin_window_s ({self.yin_window_s}) must cover the longest period 1/f0_min_hz "
                f"({1.0 / self.f0_min_hz:.4f} s): lengthen it or raise f0_min_hz"
            )
        return self


@dataclass(frozen=True)
class ProsodyFeatures:
    """Prosody of one clip. Units in the names; ``None`` where a feature is undefined (no speech,
    no voiced frame). See the module docstring for definitions."""

    duration_s: float
    rms_dbfs: float
    """Level of the whole clip (dBFS, floored at -120)."""
    active_rms_dbfs: float | None
    """Level of the speech frames only (dBFS)."""
    rms_std_db: float | None
    """Standard deviation of speech-frame levels (dB): loudness variation."""
    f0_median_hz: float | None
    f0_std_semitones: float | None
    voiced_ratio: float
    syllable_count: int
    syllable_rate_hz: float | None
    """Syllable nuclei per second of speaking time (pauses excluded)."""
    speaking_time_s: float
    pause_count: int
    pause_total_s: float
    pause_mean_s: float | None
    pause_ratio: float
    clipping_ratio: float
    frames_total: int
    frames_speech: int
    frames_pitch_analyzed: int
    frames_voiced: int
    """Voiced frames among the ``frames_pitch_analyzed`` ones."""

    @property
    def has_speech(self) -> bool:
        return self.frames_speech > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (no NaN/inf)."""
        return asdict(self)


def validate_pcm(pcm: Any, sample_rate: Any) -> np.ndarray:
    """Check ``pcm`` (1-D float, finite, non-empty) and ``sample_rate``; return float32 [N]."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise TypeError(f"sample_rate must be an int (Hz), got {sample_rate!r}")
    if sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(f"sample_rate={sample_rate} Hz is below the supported minimum {MIN_SAMPLE_RATE} Hz")
    x = np.asarray(pcm)
    if x.ndim != 1:
        raise ValueError(
            f"pcm must be mono with shape [N], got shape {list(x.shape)}; "
            f"mix channels down first (e.g. pcm.mean(axis=0) for [C, N])"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"pcm must be float samples in [-1, 1], got dtype {x.dtype}; "
            f"for int16 PCM pass pcm.astype(np.float32) / 32768"
        )
    if x.size == 0:
        raise ValueError("pcm is empty (0 samples); pass at least one sample")
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise ValueError(
            f"pcm has {int((~finite).sum())} non-finite samples (first at index {bad}: {x[bad]}); "
            f"clean the signal before analysis"
        )
    return x.astype(np.float32, copy=False)


def resample(pcm: np.ndarray, sample_rate: int, target_rate: int = ANALYSIS_RATE) -> np.ndarray:
    """``pcm`` [N] at ``sample_rate`` -> float32 [~N * target_rate / sample_rate] (soxr, HQ)."""
    if sample_rate == target_rate:
        return pcm.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(pcm, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def level_db(mean_square: np.ndarray | float) -> np.ndarray:
    """Mean square -> dBFS (RMS re full scale), floored at ``LEVEL_FLOOR_DBFS``."""
    ms = np.maximum(np.asarray(mean_square, dtype=np.float64), 10 ** (LEVEL_FLOOR_DBFS / 10))
    return 10.0 * np.log10(ms)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def syllable_nuclei(envelope_db: np.ndarray, speech: np.ndarray, dip_db: float) -> np.ndarray:
    """Indices of syllable nuclei: peaks of ``envelope_db`` [B] inside ``speech`` [B] (bool), merged
    with a neighbour unless the envelope dips at least ``dip_db`` below both between them."""
    e = envelope_db
    interior = (e[1:-1] > e[:-2]) & (e[1:-1] >= e[2:])
    candidates = np.flatnonzero(interior) + 1
    candidates = candidates[speech[candidates]]
    kept: list[int] = []
    for p in candidates.tolist():
        if not kept:
            kept.append(p)
            continue
        q = kept[-1]
        dip = e[q : p + 1].min()
        pause_between = not speech[q : p + 1].all()
        separated = pause_between or (e[q] - dip >= dip_db and e[p] - dip >= dip_db)
        if separated:
            kept.append(p)
        elif e[p] > e[q]:
            kept[-1] = p
    return np.asarray(kept, dtype=np.int64)


def pitch_frame_sample(
    speech_frames: np.ndarray, sample_fraction: float, seed: int, min_sampled_frames: int
) -> np.ndarray:
    """Sorted indices of the frames YIN runs on, a subset of ``speech_frames`` [n] (sorted).

    ``sample_fraction == 1`` keeps all. Otherwise ``k = ceil(fraction * n)`` frames (at least
    ``min_sampled_frames``, at most n) by stratified random sampling: the speech frames are cut
    into k equal consecutive strata and one frame is drawn uniformly from each with
    ``numpy.random.default_rng(seed)``. Strata spread the sample over the whole utterance, which
    halves the worst-case F0 error of simple random sampling on the espeak-ng clips.
    """
    if not 0.0 < sample_fraction <= 1.0:
        raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    n = speech_frames.size
    if sample_fraction == 1.0 or n == 0:
        return speech_frames
    k = min(n, max(min_sampled_frames, math.ceil(sample_fraction * n)))
    edges = np.ceil(np.linspace(0, n, k + 1)).astype(np.int64)
    lo, width = edges[:-1], np.diff(edges)
    picks = lo + np.floor(np.random.default_rng(seed).random(k) * width).astype(np.int64)
    return speech_frames[picks]


def extract_prosody(
    pcm: np.ndarray,
    sample_rate: int,
    settings: ProsodySettings | None = None,
    *,
    sample_fraction: float = 1.0,
    seed: int = 0,
    min_sampled_frames: int = 8,
) -> ProsodyFeatures:
    """Prosody features of ``pcm`` [N] float mono at ``sample_rate`` Hz.

    ``sample_fraction`` < 1 runs pitch estimation on that random fraction of speech frames
    (see the module docstring); 1.0 analyses every frame.
    """
    s = settings or ProsodySettings()
    x_in = validate_pcm(pcm, sample_rate)
    duration_s = x_in.size / sample_rate
    clipping_ratio = float(np.mean(np.abs(x_in) >= s.clip_level))
    x = resample(x_in, int(sample_rate)).astype(np.float64)

    block = int(round(BLOCK_S * ANALYSIS_RATE))
    per_frame = int(round(FRAME_S / BLOCK_S))
    frame = block * per_frame
    n_frames = max(1, math.ceil(x.size / frame))
    n_blocks = n_frames * per_frame
    lags = YinLags.for_range(ANALYSIS_RATE, s.f0_min_hz, s.f0_max_hz, s.yin_window_s)
    padded = np.zeros(n_frames * frame + lags.frame_length, dtype=np.float64)
    padded[: x.size] = x

    # Energy: 10 ms blocks, 20 ms frames (the last frame is zero-padded).
    block_ms = np.mean(padded[: n_blocks * block].reshape(n_blocks, block) ** 2, axis=1)
    frame_ms = block_ms.reshape(n_frames, per_frame).mean(axis=1)
    frame_db = level_db(frame_ms)
    # A clip of a few samples can resample to none (1 sample at 48 kHz -> 0 at 16 kHz): its level
    # is then the input's own.
    rms_dbfs = float(level_db(np.mean(x * x) if x.size else np.mean(np.square(x_in, dtype=np.float64))))

    loud_end = float(np.percentile(frame_db, 95))
    speech = frame_db > max(loud_end - s.speech_range_db, s.silence_floor_dbfs)
    speech_frames = np.flatnonzero(speech)
    # Speaking span: speech plus its gaps shorter than min_pause_s; longer inner gaps are pauses.
    speaking = speech.copy()
    min_pause_frames = max(1, math.ceil(s.min_pause_s / FRAME_S - 1e-9))
    pauses: list[tuple[int, int]] = []
    span_s = 0.0
    if speech_frames.size:
        first, last = int(speech_frames[0]), int(speech_frames[-1])
        for a, b in _runs(~speech[first : last + 1]):
            if b - a >= min_pause_frames:
                pauses.append((a + first, b + first))
            else:
                speaking[a + first : b + first] = True
        span_s = (last + 1 - first) * FRAME_S
    pause_total_s = sum(b - a for a, b in pauses) * FRAME_S
    speaking_time_s = span_s - pause_total_s

    # Syllable nuclei on the 10 ms envelope, smoothed with a 50 ms Hann window. The full convolution
    # is cut to the envelope's own length, centred ("same" mode would return the kernel's length,
    # not the envelope's, for clips shorter than the kernel: under 50 ms).
    kernel = np.hanning(7)[1:-1]
    half = (kernel.size - 1) // 2
    smooth_ms = np.convolve(block_ms, kernel / kernel.sum())[half : half + block_ms.size]
    nuclei = syllable_nuclei(level_db(smooth_ms), np.repeat(speaking, per_frame), s.syllable_dip_db)

    # Pitch on (a sample of) the speech frames.
    analysed = pitch_frame_sample(speech_frames, sample_fraction, seed, min_sampled_frames)
    if analysed.size:
        starts = analysed * frame
        segments = padded[starts[:, None] + np.arange(lags.frame_length)[None, :]]
        f0, _ = yin(segments, lags, s.yin_threshold)
        f0 = f0[np.isfinite(f0)]
    else:
        f0 = np.zeros(0)
    if f0.size:
        f0_median = float(np.median(f0))
        st = 12.0 * np.log2(f0 / f0_median)
        q75, q25 = np.percentile(st, [75, 25])
        f0_std = float((q75 - q25) / 1.349)
    else:
        f0_median = f0_std = None
    voiced_ratio = (f0.size / analysed.size) * (speech_frames.size / n_frames) if analysed.size else 0.0

    speech_db = frame_db[speech]
    return ProsodyFeatures(
        duration_s=float(duration_s),
        rms_dbfs=rms_dbfs,
        active_rms_dbfs=float(level_db(frame_ms[speech].mean())) if speech_db.size else None,
        rms_std_db=float(speech_db.std()) if speech_db.size else None,
        f0_median_hz=f0_median,
        f0_std_semitones=f0_std,
        voiced_ratio=float(voiced_ratio),
        syllable_count=int(nuclei.size),
        syllable_rate_hz=float(nuclei.size / speaking_time_s) if speaking_time_s > 0 else None,
        speaking_time_s=float(speaking_time_s),
        pause_count=len(pauses),
        pause_total_s=float(pause_total_s),
        pause_mean_s=float(pause_total_s / len(pauses)) if pauses else None,
        pause_ratio=float(pause_total_s / span_s) if span_s > 0 else 0.0,
        clipping_ratio=clipping_ratio,
        frames_total=int(n_frames),
        frames_speech=int(speech_frames.size),
        frames_pitch_analyzed=int(analysed.size),
        frames_voiced=int(f0.size),
    )
