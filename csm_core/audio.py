"""Audio in and out: read any WAV/FLAC, make it 24 kHz mono float32, write WAV.

Every stage sees :class:`Audio`: mono float32 samples in [-1, 1] and their sample rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csm_core.errors import AudioError

MIMI_SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples and their rate."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.ndim != 1:
            raise AudioError(f"Audio.samples must be mono (1-D), got shape {self.samples.shape}")
        if self.sample_rate <= 0:
            raise AudioError(f"Audio.sample_rate must be positive, got {self.sample_rate}")

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def resampled(self, sample_rate: int) -> "Audio":
        return Audio(resample(self.samples, self.sample_rate, sample_rate), sample_rate)


def validate_samples(samples: np.ndarray, what: str = "audio") -> np.ndarray:
    """Reject empty and non-finite audio with a message that says where and what to do."""
    if samples.size == 0:
        raise AudioError(f"{what} is empty (0 samples): record or choose a file with sound in it")
    finite = np.isfinite(samples)
    if not finite.all():
        first = int(np.flatnonzero(~finite.reshape(-1))[0])
        raise AudioError(
            f"{what} has {int((~finite).sum())} NaN or infinite samples (first at index {first}): "
            "the file is corrupt or was written from a failed computation"
        )
    return samples


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[N] or [N, C] -> [N] float32 (channels averaged)."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling (soxr); returns the input unchanged when the rates agree."""
    if from_rate == to_rate:
        return samples
    import soxr

    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def read_audio(path: str | Path, sample_rate: int | None = MIMI_SAMPLE_RATE) -> Audio:
    """Read a WAV/FLAC/OGG file, mix it to mono and resample it (``sample_rate=None`` keeps the rate)."""
    import soundfile

    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file {str(path)!r} does not exist")
    if path.is_dir():
        raise AudioError(f"{str(path)!r} is a directory, not an audio file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(
            f"{str(path)!r} is not a readable audio file ({exc}); use WAV, FLAC or OGG"
        ) from None
    samples = validate_samples(to_mono(samples), what=f"audio file {str(path)!r}")
    audio = Audio(samples, int(rate))
    return audio.resampled(sample_rate) if sample_rate else audio


def write_wav(path: str | Path, audio: Audio) -> Path:
    """Write 16-bit PCM WAV (the parent directory must exist); returns the path."""
    import soundfile

    path = Path(path)
    if not path.parent.exists():
        raise AudioError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    validate_samples(audio.samples, what="audio to write")
    soundfile.write(str(path), np.clip(audio.samples, -1.0, 1.0), audio.sample_rate, subtype="PCM_16")
    return path


class WavStreamWriter:
    """Writes a WAV file chunk by chunk, so audio is on disk as it is generated.

    The header is valid after every chunk (libsndfile updates it), so another program can read the
    file while it grows. Use as a context manager.
    """

    def __init__(self, path: str | Path, sample_rate: int):
        import soundfile

        self.path = Path(path)
        if not self.path.parent.exists():
            raise AudioError(f"cannot write {str(self.path)!r}: directory does not exist")
        self._file = soundfile.SoundFile(
            str(self.path), mode="w", samplerate=sample_rate, channels=1, subtype="PCM_16"
        )
        self.frames_written = 0

    def write(self, chunk: np.ndarray) -> None:
        chunk = validate_samples(np.asarray(chunk, dtype=np.float32).reshape(-1), what="audio chunk")
        self._file.write(np.clip(chunk, -1.0, 1.0))
        self._file.flush()
        self.frames_written += len(chunk)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "WavStreamWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
