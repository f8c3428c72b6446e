"""Audio in and out: read any WAV/FLAC, make it 24 kHz mono float32, write WAV.

Reading checks the file's header before decoding (:mod:`csm_core.audio_header`): the limits on
duration, rate and channels are there. Writing a whole file is atomic.

Every stage sees :class:`Audio`: mono float32 samples in [-1, 1] and their sample rate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csm_core.audio_header import MAX_INPUT_SECONDS, MIN_INPUT_SECONDS, check_audio_file
from csm_core.errors import AudioError
from csm_core.files import write_atomic

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


def read_audio(
    path: str | Path,
    sample_rate: int | None = MIMI_SAMPLE_RATE,
    what: str | None = None,
    *,
    min_seconds: float = MIN_INPUT_SECONDS,
    max_seconds: float = MAX_INPUT_SECONDS,
) -> Audio:
    """Read a WAV/FLAC/OGG file, mix it to mono and resample it (``sample_rate=None`` keeps the rate).

    The header is checked first (:func:`csm_core.audio_header.check_audio_file`: format, channels,
    rate, a truncated WAV, empty, shorter than ``min_seconds`` or longer than ``max_seconds``), so a
    file that would be refused is never decoded. After decoding, fewer samples than the header
    declared (a FLAC cut short) and NaN/infinite samples are errors too. ``what`` names the file in
    errors (default ``audio file '<path>'``); every error is an :class:`AudioError`.
    """
    import soundfile

    path = Path(path)
    what = what or f"audio file {str(path)!r}"
    header = check_audio_file(path, what, min_seconds=min_seconds, max_seconds=max_seconds)
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(
            f"{what} cannot be decoded ({exc}): the file is truncated or corrupt; copy or export it again"
        ) from None
    if len(samples) < header.frames:
        raise AudioError(
            f"{what} is truncated: its header promises {header.frames} samples ({header.duration_s:.3f} s) "
            f"but only {len(samples)} could be decoded: copy or export it again"
        )
    samples = validate_samples(to_mono(samples), what=what)
    audio = Audio(samples, int(rate))
    return audio.resampled(sample_rate) if sample_rate else audio


def write_wav(path: str | Path, audio: Audio) -> Path:
    """Write 16-bit PCM WAV atomically (a reader sees the old file or the whole new one, see
    :func:`csm_core.files.write_atomic`); the parent directory must exist. Returns the path."""
    import soundfile

    path = Path(path)
    if not path.parent.is_dir():
        raise AudioError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise AudioError(f"cannot write {str(path)!r}: it is a directory; give a file name such as reply.wav")
    validate_samples(audio.samples, what="audio to write")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio.samples, -1.0, 1.0), audio.sample_rate, subtype="PCM_16", format="WAV")
    try:
        return write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise AudioError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


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
