"""Test signals with known content, importable from every test folder."""

from __future__ import annotations

import numpy as np


def tone(frequency: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
