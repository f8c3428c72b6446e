"""Response formats: 24 kHz mono float32 chunks in, the bytes of a file out, as the chunks arrive.

=======  ==================  ==========================================================================
format   Content-Type        bytes
=======  ==================  ==========================================================================
pcm      audio/pcm           raw signed 16-bit little-endian, 24 kHz, mono, no header (streamed)
wav      audio/wav           a 44-byte header whose sizes say "unknown" (0xFFFFFFFF), then PCM (streamed)
flac     audio/flac          a whole FLAC file, sent when the audio is complete (its header holds the length)
mp3      audio/mpeg          MPEG-1 layer III frames (PyAV/libmp3lame, streamed)
opus     audio/ogg           Ogg Opus (PyAV/libopus, streamed page by page; decoders play it at 48 kHz)
aac      audio/aac           ADTS AAC-LC (PyAV, streamed)
=======  ==================  ==========================================================================

:func:`open_encoder` returns an :class:`Encoder`: ``write(samples) -> bytes`` (possibly empty) and
``finish() -> bytes``; the concatenation of everything returned is the file. mp3, opus and aac need
PyAV (``pip install av``); without it :func:`check_format` raises a 400 that says so.
"""

from __future__ import annotations

import importlib.util
import io
import struct

import numpy as np

from csm_serve.errors import bad_request

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}
PYAV_FORMATS = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac")}
"""format -> (PyAV container, codec)."""
UNKNOWN_SIZE = 0xFFFFFFFF


def pyav_available() -> bool:
    return importlib.util.find_spec("av") is not None


def check_format(fmt: str) -> None:
    """A 400 naming the choices for an unknown format, or naming PyAV when the format needs it."""
    if fmt not in FORMATS:
        raise bad_request(f"response_format {fmt!r} is not supported: choose one of {', '.join(FORMATS)}",
                          param="response_format", code="unsupported_format")
    if fmt in PYAV_FORMATS and not pyav_available():
        raise bad_request(
            f"response_format {fmt!r} needs PyAV, which is not installed on this server (pip install av); "
            "wav, pcm and flac work without it", param="response_format", code="format_unavailable")


def to_s16le(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped) as signed 16-bit little-endian bytes."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def wav_stream_header(sample_rate: int) -> bytes:
    """A PCM16 mono WAV header for a stream of unknown length (RIFF and data sizes 0xFFFFFFFF)."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", UNKNOWN_SIZE)


class Encoder:
    """Chunks in, file bytes out. ``streaming`` says whether bytes come out before :meth:`finish`."""

    streaming = True

    def write(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class PcmEncoder(Encoder):
    def write(self, samples: np.ndarray) -> bytes:
        return to_s16le(samples)


class WavStreamEncoder(Encoder):
    """The header once (before the first samples, or alone when there are none), then PCM."""

    def __init__(self, sample_rate: int):
        self.sample_rate, self._started = sample_rate, False

    def _header(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return wav_stream_header(self.sample_rate)

    def write(self, samples: np.ndarray) -> bytes:
        return self._header() + to_s16le(samples)

    def finish(self) -> bytes:
        return self._header()


class WholeFileEncoder(Encoder):
    """Collects every chunk and writes one file at :meth:`finish` (formats whose header needs the length)."""

    streaming = False

    def __init__(self, sample_rate: int, fmt: str):
        self.sample_rate, self.fmt, self._chunks = sample_rate, fmt, []

    def write(self, samples: np.ndarray) -> bytes:
        self._chunks.append(np.asarray(samples, dtype=np.float32))
        return b""

    def finish(self) -> bytes:
        return encode_whole(np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32),
                            self.sample_rate, self.fmt)


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file that hands over what was written since the last :meth:`take`."""

    def __init__(self):
        super().__init__()
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self._buffer += bytes(data)
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class PyAvEncoder(Encoder):
    """mp3 / opus / aac through PyAV into a non-seekable sink, so bytes leave as packets are made."""

    def __init__(self, sample_rate: int, fmt: str):
        import av

        container_format, codec = PYAV_FORMATS[fmt]
        self._sink = _Sink()
        options = {"page_duration": "20000"} if container_format == "ogg" else {}  # 20 ms Ogg pages
        self._container = av.open(self._sink, mode="w", format=container_format, options=options)
        self._stream = self._container.add_stream(codec, rate=sample_rate)
        self._stream.layout = "mono"
        self._stream.bit_rate = 64_000
        self._rate, self._pts, self._closed = sample_rate, 0, False

    def _frame(self, samples: np.ndarray):
        import av

        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = self._rate, self._pts
        self._pts += pcm.shape[1]
        return frame

    def write(self, samples: np.ndarray) -> bytes:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size:
            for packet in self._stream.encode(self._frame(samples)):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._closed:
            self._closed = True
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        return self._sink.take()


def open_encoder(fmt: str, sample_rate: int) -> Encoder:
    """The encoder of ``fmt`` (checked with :func:`check_format` first)."""
    check_format(fmt)
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavStreamEncoder(sample_rate)
    if fmt == "flac":
        return WholeFileEncoder(sample_rate, fmt)
    return PyAvEncoder(sample_rate, fmt)


def encode_whole(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """One complete file: WAV and FLAC with exact sizes (soundfile), the rest through their encoder."""
    if fmt in ("wav", "flac"):
        import soundfile

        buffer = io.BytesIO()
        soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format=fmt.upper())
        return buffer.getvalue()
    encoder = open_encoder(fmt, sample_rate)
    return encoder.write(samples) + encoder.finish()
