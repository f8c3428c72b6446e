"""The quality measures the optimizer gates are stated in."""

from __future__ import annotations

import math

import numpy as np
import pytest

from csm_core.quality import code_agreement, compare_runs, log_spectral_distance, snr_db


def test_code_agreement_counts_equal_codes_and_missing_frames():
    reference = np.arange(12).reshape(3, 4)
    test = reference.copy()
    assert code_agreement(reference, test) == 1.0
    test[0, 0] = -1
    assert code_agreement(reference, test) == pytest.approx(11 / 12)
    # One frame fewer: its three codes count as disagreements.
    assert code_agreement(reference, reference[:, :3]) == pytest.approx(9 / 12)
    with pytest.raises(ValueError, match="same leading shape"):
        code_agreement(reference, reference[:2])


def test_snr_follows_the_noise_level():
    rng = np.random.default_rng(0)
    signal = np.sin(np.linspace(0, 200, 24000))
    noise = rng.standard_normal(signal.size)
    assert snr_db(signal, signal) == math.inf
    loud = snr_db(signal, signal + 0.1 * noise)
    quiet = snr_db(signal, signal + 0.001 * noise)
    assert quiet == pytest.approx(loud + 40, abs=0.5)  # 100x less noise amplitude is +40 dB


def test_log_spectral_distance_is_zero_for_equal_signals_and_grows_with_distortion():
    rng = np.random.default_rng(1)
    signal = rng.standard_normal(24000)
    assert log_spectral_distance(signal, signal) == 0.0
    small = log_spectral_distance(signal, signal + 0.01 * rng.standard_normal(signal.size))
    large = log_spectral_distance(signal, signal + 1.0 * rng.standard_normal(signal.size))
    assert 0 < small < large
    assert log_spectral_distance(signal[:100], signal[:100]) == 0.0  # shorter than one window


def test_compare_runs_reports_audio_measures_only_with_audio():
    codes = np.zeros((4, 5), dtype=np.int64)
    assert compare_runs(codes, codes).snr_db is None
    report = compare_runs(codes, codes, np.ones(1000), np.ones(1000))
    assert report.exact and report.snr_db == math.inf and report.log_spectral_distance_db == 0.0
