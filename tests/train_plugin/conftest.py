"""Fixtures for the train tests: real speech from espeak-ng, and ``csmctl`` run as a subprocess.

Clips are generated once per session. Tests that need them skip (with the reason) when espeak-ng is
missing; CI installs it with ``apt-get install espeak-ng``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ESPEAK = shutil.which("espeak-ng")
SKIP_REASON = "espeak-ng is not installed (apt-get install espeak-ng)"

# Four two-turn conversations, alternating speakers.
TURNS = [
    ("c0", 0, "Hello, how are you today?"),
    ("c0", 1, "I am fine, thank you."),
    ("c1", 0, "The weather is lovely."),
    ("c1", 1, "Shall we go for a walk?"),
    ("c2", 0, "Yes, let us go now."),
    ("c2", 1, "Good morning everyone."),
    ("c3", 0, "Please close the door."),
    ("c3", 1, "It is time for dinner."),
]
QUIET = "[options.train]\nprogress = false\nlog_every = 1\n"


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    """A folder with one espeak-ng WAV (22050 Hz mono) per turn of :data:`TURNS`, and ``quiet.toml``."""
    if ESPEAK is None:
        pytest.skip(SKIP_REASON)
    folder = tmp_path_factory.mktemp("speech")
    for index, (_, speaker, text) in enumerate(TURNS):
        voice = ["-v", "en+m3"] if speaker else ["-v", "en+f3"]
        subprocess.run([ESPEAK, *voice, "-s", "170", "-w", str(folder / f"turn{index}.wav"), text],
                       check=True, capture_output=True)
    (folder / "quiet.toml").write_text(QUIET)
    return folder


def manifest_rows() -> list[dict]:
    return [
        {"audio": f"turn{i}.wav", "text": text, "speaker": speaker, "conversation": conversation}
        for i, (conversation, speaker, text) in enumerate(TURNS)
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def stereo_44k(source: Path, target: Path) -> Path:
    """``source`` as 44.1 kHz stereo FLAC (the trainer must take any rate and channel count)."""
    import soxr

    pcm, rate = sf.read(str(source), dtype="float32")
    pcm = soxr.resample(pcm, rate, 44100)
    sf.write(str(target), np.stack([pcm, 0.5 * pcm], axis=1), 44100, format="FLAC")
    return target


def csmctl_env(cache: Path) -> dict:
    # One intra-op thread: on a shared 2-core machine two threads wait on each other (see csm_model.presets).
    environ = {**os.environ, "NO_COLOR": "1", "XDG_CACHE_HOME": str(cache), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    environ.pop("CSM_LOAD_PLUGINS", None)
    return environ


def csmctl(cwd: Path, cache: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csm_core.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=csmctl_env(cache), timeout=timeout)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")
