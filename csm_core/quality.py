"""How far an optimized run is from the unoptimized one: the measures the quality gates state bounds in.

- :func:`code_agreement`: the fraction of codes (frame x codebook) that are equal; 1.0 means identical.
  Exact optimizers must reach 1.0.
- :func:`snr_db`: signal-to-noise ratio of a test waveform against a reference, in dB (higher is closer;
  ``inf`` when identical).
- :func:`log_spectral_distance`: RMS difference of the two log power spectra in dB, averaged over
  frames (0 when identical; a few dB is audible but close).

Arrays are numpy. Codes are [K, F] (or [B, K, F]); audio is mono float samples at one rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def code_agreement(reference: np.ndarray, test: np.ndarray) -> float:
    """Fraction of positions where ``test`` equals ``reference`` over the common frames.

    Frames one run has and the other lacks (one stopped earlier) count as disagreements, so two runs
    of different lengths never reach 1.0.
    """
    reference, test = np.asarray(reference), np.asarray(test)
    if reference.shape[:-1] != test.shape[:-1]:
        raise ValueError(
            f"codes must have the same leading shape ([K, F] or [B, K, F]), got {reference.shape} and {test.shape}"
        )
    frames = max(reference.shape[-1], test.shape[-1])
    if frames == 0:
        return 1.0
    common = min(reference.shape[-1], test.shape[-1])
    equal = np.count_nonzero(reference[..., :common] == test[..., :common])
    return float(equal) / float(np.prod(reference.shape[:-1]) * frames)


def _pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    test = np.asarray(test, dtype=np.float64).reshape(-1)
    n = min(reference.size, test.size)
    if n == 0:
        raise ValueError("both signals need at least one sample")
    return reference[:n], test[:n]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """``10 log10(sum(ref^2) / sum((ref - test)^2))`` over the common length, in dB."""
    reference, test = _pair(reference, test)
    noise = float(np.sum((reference - test) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def log_spectral_distance(reference: np.ndarray, test: np.ndarray, n_fft: int = 512, hop: int = 256) -> float:
    """Mean over frames of the RMS difference of Hann-windowed log power spectra, in dB."""
    reference, test = _pair(reference, test)
    if reference.size < n_fft:
        pad = n_fft - reference.size
        reference, test = np.pad(reference, (0, pad)), np.pad(test, (0, pad))
    window = np.hanning(n_fft)
    starts = range(0, reference.size - n_fft + 1, hop)
    frames_ref = np.stack([reference[s : s + n_fft] * window for s in starts])
    frames_test = np.stack([test[s : s + n_fft] * window for s in starts])
    eps = 1e-10
    power_ref = np.abs(np.fft.rfft(frames_ref, axis=1)) ** 2 + eps
    power_test = np.abs(np.fft.rfft(frames_test, axis=1)) ** 2 + eps
    diff = 10.0 * np.log10(power_ref) - 10.0 * np.log10(power_test)
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=1))))


@dataclass(frozen=True)
class QualityReport:
    """An optimized run measured against the unoptimized one (see the module docstring for units)."""

    code_agreement: float
    snr_db: float | None = None
    log_spectral_distance_db: float | None = None

    @property
    def exact(self) -> bool:
        return self.code_agreement == 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def compare_runs(
    reference_codes: np.ndarray,
    test_codes: np.ndarray,
    reference_audio: np.ndarray | None = None,
    test_audio: np.ndarray | None = None,
) -> QualityReport:
    """All three measures at once; the audio ones only when both waveforms are given and non-empty."""
    agreement = code_agreement(reference_codes, test_codes)
    if reference_audio is None or test_audio is None or min(np.size(reference_audio), np.size(test_audio)) == 0:
        return QualityReport(agreement)
    return QualityReport(
        agreement, snr_db(reference_audio, test_audio), log_spectral_distance(reference_audio, test_audio)
    )
