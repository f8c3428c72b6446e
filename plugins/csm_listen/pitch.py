"""YIN fundamental-frequency estimation, vectorised over frames (pure numpy).

Implements de Cheveigné & Kawahara (2002), "YIN, a fundamental frequency estimator for speech and
music", steps 1-5:

1. difference function ``d(tau) = sum_{j<W} (x[j] - x[j+tau])^2``, computed for all lags at once as
   ``E(0) + E(tau) - 2 r(tau)`` with an FFT cross-correlation ``r`` and running energies ``E``;
2. cumulative-mean-normalised difference ``d'(tau) = d(tau) * tau / sum_{k=1..tau} d(k)``, ``d'(0) = 1``;
3. absolute threshold: the first lag in the search range where ``d'`` dips below ``threshold``, then
   followed down to the bottom of that dip (this prefers the true period over its multiples, the
   classic octave-too-low error);
4. parabolic interpolation of ``d'`` around that lag for sub-sample precision;
5. a frame with no dip below the threshold is *unvoiced* (no F0).

A frame is a row of ``window + max_lag`` samples; the caller decides where frames start (see
:func:`csm_listen.prosody.extract_prosody`, which also gates voicing with an energy threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class YinLags:
    """The lag geometry of YIN for one sample rate and pitch range.

    ``window`` is the integration window ``W`` in samples; lags run over ``[min_lag, max_lag]``
    (``min_lag = floor(sr / fmax)``, ``max_lag = ceil(sr / fmin)``); a frame is ``frame_length =
    window + max_lag`` samples long.
    """

    sample_rate: int
    window: int
    min_lag: int
    max_lag: int

    @classmethod
    def for_range(cls, sample_rate: int, fmin_hz: float, fmax_hz: float, window_s: float) -> YinLags:
        """Lags for F0 in ``[fmin_hz, fmax_hz]`` with an integration window of ``window_s`` seconds."""
        if not 0 < fmin_hz < fmax_hz < sample_rate / 4:
            raise ValueError(
                f"pitch range fmin_hz={fmin_hz}, fmax_hz={fmax_hz} is invalid at sample_rate={sample_rate}: "
                f"need 0 < fmin_hz < fmax_hz < sample_rate/4"
            )
        window = int(round(window_s * sample_rate))
        min_lag = max(2, int(np.floor(sample_rate / fmax_hz)))
        max_lag = int(np.ceil(sample_rate / fmin_hz))
        if window < max_lag:
            raise ValueError(
                f"YIN window of {window_s * 1000:.1f} ms is shorter than the longest period "
                f"({1000 / fmin_hz:.1f} ms at fmin_hz={fmin_hz}); lengthen the window or raise fmin_hz"
            )
        return cls(sample_rate=sample_rate, window=window, min_lag=min_lag, max_lag=max_lag)

    @property
    def frame_length(self) -> int:
        """Samples per analysed frame: ``window + max_lag``."""
        return self.window + self.max_lag


def cmndf(frames: np.ndarray, lags: YinLags) -> np.ndarray:
    """Cumulative-mean-normalised difference ``d'`` of each frame.

    ``frames`` [M, lags.frame_length] float -> [M, lags.max_lag + 1] float64, ``d'[:, 0] = 1``.
    An all-zero frame gives ``d' = 1`` at every lag (no periodicity).
    """
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != lags.frame_length:
        raise ValueError(f"frames must have shape [M, {lags.frame_length}], got {list(x.shape)}")
    w, max_lag = lags.window, lags.max_lag
    nfft = 1 << int(np.ceil(np.log2(x.shape[1] + w)))
    # r[tau] = sum_{j<W} x[j] x[j+tau], for all lags at once.
    spec = np.fft.rfft(x, nfft) * np.conj(np.fft.rfft(x[:, :w], nfft))
    r = np.fft.irfft(spec, nfft)[:, : max_lag + 1]
    energy = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x * x, axis=1)], axis=1)
    e0 = energy[:, w : w + 1]  # sum_{j<W} x[j]^2
    taus = np.arange(max_lag + 1)
    e_tau = energy[:, taus + w] - energy[:, taus]  # sum_{j<W} x[j+tau]^2
    d = np.maximum(e0 + e_tau - 2.0 * r, 0.0)
    d[:, 0] = 0.0
    running = np.cumsum(d[:, 1:], axis=1)
    out = np.ones_like(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[:, 1:] = np.where(running > 0, d[:, 1:] * taus[1:] / running, 1.0)
    return out


def yin(frames: np.ndarray, lags: YinLags, threshold: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """F0 of each frame by YIN.

    ``frames`` [M, lags.frame_length] -> (``f0_hz`` [M] float64, NaN where unvoiced;
    ``periodicity`` [M] float64 = ``1 - d'`` at the chosen lag, in [0, 1]-ish, higher = more periodic).
    ``threshold`` is YIN's absolute threshold on ``d'`` (0.10-0.20 is typical; 0.15 here).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    d = cmndf(frames, lags)
    m = d.shape[0]
    search = d[:, lags.min_lag : lags.max_lag]  # candidate lags; max_lag itself is kept as a neighbour
    below = search < threshold
    voiced = below.any(axis=1)
    tau = np.where(voiced, np.argmax(below, axis=1), np.argmin(search, axis=1)) + lags.min_lag
    # Follow each dip down to its local minimum (bounded by the search range).
    rows = np.arange(m)
    while True:
        can_step = (tau + 1 < lags.max_lag) & (d[rows, np.minimum(tau + 1, lags.max_lag)] < d[rows, tau])
        if not can_step.any():
            break
        tau = tau + can_step
    # Parabolic interpolation of d' around tau.
    a, b, c = d[rows, tau - 1], d[rows, tau], d[rows, tau + 1]
    denom = a - 2.0 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / denom, 0.0)
    shift = np.clip(shift, -0.5, 0.5)
    f0 = np.where(voiced, lags.sample_rate / (tau + shift), np.nan)
    return f0, 1.0 - b
