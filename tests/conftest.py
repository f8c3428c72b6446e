"""Fixtures shared by every test folder."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile


@pytest.fixture
def write_wav(tmp_path):
    """Write samples ([N] or [N, C]) at a rate to a real WAV (or FLAC) file and return its path."""

    def write(name: str, samples: np.ndarray, sample_rate: int, subtype: str | None = None):
        path = tmp_path / name
        soundfile.write(str(path), samples, sample_rate, subtype=subtype)
        return path

    return write
