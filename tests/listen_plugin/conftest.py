"""Fixtures for the csm_listen tests: real speech from espeak-ng, and synthetic signals.

espeak-ng writes 22050 Hz WAV; the clips are generated once per session into a temporary folder.
Tests that use them are marked ``@pytest.mark.espeak`` and skip (with the reason) when the program
is missing; CI installs it with ``apt-get install espeak-ng``.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf

ESPEAK = shutil.which("espeak-ng")
SKIP_REASON = "espeak-ng is not installed (apt-get install espeak-ng)"

SENTENCES = {
    # syllable counts by hand, to check the nuclei detector against something it did not compute
    "fox": ("The quick brown fox jumps over the lazy dog, and then it rests for a while.", 18),
    "thanks": ("I really cannot believe how wonderful this afternoon has been, thank you so much for coming.", 26),
}
STYLES = {
    "calm": ["-s", "110", "-p", "20", "-a", "40"],  # slow, low, quiet
    "aroused": ["-s", "220", "-p", "80", "-a", "180"],  # fast, high, loud
}


@dataclass(frozen=True)
class Clip:
    pcm: np.ndarray  # float32 [N]
    sample_rate: int
    sentence: str
    style: str
    syllables: int


@pytest.fixture(scope="session")
def espeak_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Clip]:
    """(sentence key, style) -> Clip, for every sentence x style."""
    if ESPEAK is None:
        pytest.skip(SKIP_REASON)
    folder = tmp_path_factory.mktemp("espeak")
    clips = {}
    for key, (text, syllables) in SENTENCES.items():
        for style, args in STYLES.items():
            path = folder / f"{key}-{style}.wav"
            subprocess.run([ESPEAK, *args, "-w", str(path), text], check=True, capture_output=True)
            pcm, rate = sf.read(path, dtype="float32")
            clips[(key, style)] = Clip(pcm, int(rate), key, style, syllables)
    return clips


@pytest.fixture(scope="session")
def calm_clip(espeak_clips: dict[tuple[str, str], Clip]) -> Clip:
    return espeak_clips[("fox", "calm")]


@pytest.fixture(scope="session")
def aroused_clip(espeak_clips: dict[tuple[str, str], Clip]) -> Clip:
    return espeak_clips[("fox", "aroused")]


def harmonic_tone(f0: float, seconds: float, rate: int, amplitudes=(1.0,), phase_seed: int = 0) -> np.ndarray:
    """sum_k a_k sin(2 pi k f0 t + phi_k), normalised to peak 0.5, float32 [seconds * rate]."""
    t = np.arange(int(round(seconds * rate))) / rate
    phases = np.random.default_rng(phase_seed).uniform(0, 2 * np.pi, len(amplitudes))
    x = sum(a * np.sin(2 * np.pi * (k + 1) * f0 * t + p) for k, (a, p) in enumerate(zip(amplitudes, phases)))
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


@pytest.fixture(scope="session")
def tone():
    """The :func:`harmonic_tone` generator."""
    return harmonic_tone
