"""Real audio files that are wrong in one way each, for the tests of the edge checks.

Every helper writes a file with soundfile (or its bytes cut or patched) and returns its path.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile

from audio_signals import tone


def wav(path: Path, seconds: float = 0.5, rate: int = 24_000, channels: int = 1, **kwargs) -> Path:
    """A tone of ``seconds`` at ``rate``; ``channels`` > 1 repeats it on each channel."""
    samples = tone(220.0, seconds, rate)
    if channels > 1:
        samples = np.repeat(samples[:, None], channels, axis=1)
    soundfile.write(str(path), samples, rate, **kwargs)
    return Path(path)


def truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of ``source``'s bytes: a recording or copy cut short."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


def long_silent_wav(path: Path, seconds: float, rate: int = 48_000) -> Path:
    """A complete 16-bit mono WAV of ``seconds`` of silence, written as a sparse file: the header is
    patched to the full size and the file extended to it, so it costs no disk space or time."""
    soundfile.write(str(path), np.zeros(1, dtype=np.float32), rate, subtype="PCM_16")
    data = bytearray(Path(path).read_bytes())
    offset = data.index(b"data")
    size = int(seconds * rate) * 2
    struct.pack_into("<I", data, 4, len(data) - 8 - 2 + size)
    struct.pack_into("<I", data, offset + 4, size)
    with open(path, "wb") as handle:
        handle.write(data[: offset + 8])
        handle.truncate(offset + 8 + size)
    return Path(path)


def lying_header_wav(path: Path, declared_seconds: float, seconds: float = 0.5, rate: int = 24_000) -> Path:
    """A 16-bit WAV holding ``seconds`` of audio whose header declares ``declared_seconds``."""
    wav(path, seconds, rate, subtype="PCM_16")
    data = bytearray(Path(path).read_bytes())
    offset = data.index(b"data")
    size = int(declared_seconds * rate) * 2
    struct.pack_into("<I", data, 4, offset + size)
    struct.pack_into("<I", data, offset + 4, size)
    Path(path).write_bytes(bytes(data))
    return Path(path)
