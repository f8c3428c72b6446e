"""An audio file checked from its header, before a single sample is decoded.

:func:`check_audio_file` reads only the header (``soundfile.info``, and for WAV the RIFF chunk list)
and raises :class:`csm_core.errors.AudioError` naming the file, the value and the limit when the file

- is empty (0 bytes) or not in a format libsndfile reads (WAV, FLAC, OGG, AIFF, ...);
- is a WAV whose ``data`` chunk declares more bytes than the file holds (cut short while it was
  written or copied: libsndfile would silently read what is there);
- has more than :data:`MAX_CHANNELS` channels, or a sample rate outside
  [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`];
- holds no audio (0 frames), or lasts less than ``min_seconds`` (default :data:`MIN_INPUT_SECONDS`)
  or more than ``max_seconds`` (default :data:`MAX_INPUT_SECONDS`).

The duration comes from the header, so a 10-minute clip is refused in milliseconds, without decoding.
A FLAC cut short is caught when it is decoded (its STREAMINFO cannot tell): see
:func:`csm_core.audio.read_audio`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from csm_core.errors import AudioError

MIN_INPUT_SECONDS = 0.08
"""Shortest audio taken (s): one 80 ms Mimi codec frame. Anything shorter is mostly the padding of
that frame, not speech (the user's turn and the ``[voice]`` clip alike)."""
MAX_INPUT_SECONDS = 120.0
"""Longest audio taken (s). CSM's context holds 2048 positions, 163.8 s of audio at 12.5 frames/s,
for the whole conversation and the reply: longer speech could never be used."""
MIN_SAMPLE_RATE = 8_000
"""Lowest sample rate taken (Hz): telephone band, the least that carries speech."""
MAX_SAMPLE_RATE = 192_000
"""Highest sample rate taken (Hz)."""
MAX_CHANNELS = 8
"""Most channels taken; they are mixed down to mono."""

_UNKNOWN_SIZE = 0xFFFFFFFF  # a WAV written by a streaming program that never went back to set the size


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header says: ``format`` and ``subtype`` (libsndfile's names), ``channels``,
    ``sample_rate`` (Hz) and ``frames`` (samples per channel)."""

    path: Path
    format: str
    subtype: str
    channels: int
    sample_rate: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class WavData:
    """A WAV file's ``data`` chunk: the bytes its header ``declared``, the bytes the file ``held``
    after the chunk's start, and ``bytes_per_second`` from the ``fmt`` chunk (0 if unknown)."""

    declared: int
    held: int
    bytes_per_second: int

    @property
    def truncated(self) -> bool:
        return self.held < self.declared

    def seconds(self, size: int) -> float | None:
        return size / self.bytes_per_second if self.bytes_per_second > 0 else None


def wav_data(path: str | Path) -> WavData | None:
    """The ``data`` chunk of a RIFF/RIFX/RF64 WAVE file, or None when ``path`` is not one, has no
    ``data`` chunk within the file, or declares its size unknown (0xFFFFFFFF)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
            return None
        order = ">" if head[:4] == b"RIFX" else "<"
        ds64_data_size = None
        bytes_per_second = 0
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack(order + "4sI", handle.read(8))
            if chunk_id == b"ds64" and chunk_size >= 16:
                _, ds64_data_size = struct.unpack(order + "QQ", handle.read(16))
            elif chunk_id == b"fmt " and chunk_size >= 12:
                _, _, _, bytes_per_second = struct.unpack(order + "HHII", handle.read(12))
            elif chunk_id == b"data":
                if head[:4] == b"RF64" and chunk_size == _UNKNOWN_SIZE and ds64_data_size is not None:
                    chunk_size = ds64_data_size
                elif chunk_size == _UNKNOWN_SIZE:
                    return None
                return WavData(chunk_size, size - offset - 8, bytes_per_second)
            offset += 8 + chunk_size + (chunk_size & 1)
    return None


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + " s"


def check_audio_file(
    path: str | Path,
    what: str | None = None,
    *,
    min_seconds: float = MIN_INPUT_SECONDS,
    max_seconds: float = MAX_INPUT_SECONDS,
) -> AudioHeader:
    """The header of the audio file at ``path``, checked (see the module docstring); ``what`` names
    the file in errors (default ``audio file '<path>'``)."""
    import soundfile

    path = Path(path)
    what = what or f"audio file {str(path)!r}"
    if not path.exists():
        raise AudioError(f"{what} does not exist: check the path")
    if path.is_dir():
        raise AudioError(f"{what} is a directory, not an audio file: give a WAV or FLAC file")
    if path.stat().st_size == 0:
        raise AudioError(f"{what} is empty (0 bytes): record or choose a file with sound in it")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{what} is not a readable audio file ({exc}); use WAV, FLAC or OGG") from None
    except OSError as exc:
        raise AudioError(f"{what} cannot be read ({exc.strerror or exc})") from None
    data = wav_data(path)
    if data is not None and data.truncated:
        promised, held = data.seconds(data.declared), data.seconds(data.held)
        raise AudioError(
            f"{what} is truncated: its header promises {data.declared} bytes of audio"
            + (f" ({_seconds(promised)})" if promised is not None else "")
            + f" but the file holds {max(data.held, 0)}"
            + (f" ({_seconds(max(held, 0.0))})" if held is not None else "")
            + ": it was cut short while being written or copied; copy or export it again"
        )
    header = AudioHeader(path, info.format, info.subtype, int(info.channels), int(info.samplerate), int(info.frames))
    if not 1 <= header.channels <= MAX_CHANNELS:
        raise AudioError(
            f"{what} has {header.channels} channels: at most {MAX_CHANNELS} are taken; mix it down to mono first"
        )
    if not MIN_SAMPLE_RATE <= header.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{what} has a sample rate of {header.sample_rate} Hz: the rate must be between {MIN_SAMPLE_RATE} "
            f"and {MAX_SAMPLE_RATE} Hz; resample it (16 or 24 kHz suits speech)"
        )
    if header.frames <= 0:
        raise AudioError(f"{what} is empty (0 samples): record or choose a file with sound in it")
    if header.duration_s < min_seconds:
        raise AudioError(
            f"{what} is too short: {_seconds(header.duration_s)} ({header.frames} samples at {header.sample_rate} Hz); "
            f"the minimum is {_seconds(min_seconds)}"
            + (" (one 80 ms codec frame)" if min_seconds == MIN_INPUT_SECONDS else "")
            + ": record a longer clip"
        )
    if header.duration_s > max_seconds:
        raise AudioError(
            f"{what} is too long: {_seconds(header.duration_s)} by its header; the maximum is "
            f"{_seconds(max_seconds)}: cut it into turns of at most {_seconds(max_seconds)}"
        )
    return header
