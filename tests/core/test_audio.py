"""Audio I/O: any rate and channel count in, 24 kHz mono out; clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from audio_signals import tone
from csm_core.audio import Audio, WavStreamWriter, read_audio, write_wav
from csm_core.errors import AudioError


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_any_rate_becomes_24k_with_the_same_pitch_and_duration(write_wav, rate, fmt):
    path = write_wav(f"a.{fmt}", tone(440, 0.5, rate), rate)
    audio = read_audio(path)
    assert audio.sample_rate == 24000 and audio.samples.dtype == np.float32
    assert abs(audio.duration_s - 0.5) < 1e-3
    spectrum = np.abs(np.fft.rfft(audio.samples))
    peak_hz = np.argmax(spectrum) * 24000 / len(audio.samples)
    assert abs(peak_hz - 440) < 3


def test_stereo_is_mixed_to_mono(write_wav):
    left, right = tone(440, 0.2, 24000, 0.4), np.zeros(4800, dtype=np.float32)
    audio = read_audio(write_wav("s.wav", np.stack([left, right], axis=1), 24000))
    np.testing.assert_allclose(audio.samples, left / 2, atol=1e-4)


def test_sample_rate_none_keeps_the_native_rate(write_wav):
    audio = read_audio(write_wav("n.wav", tone(440, 0.1, 16000), 16000), sample_rate=None)
    assert audio.sample_rate == 16000 and len(audio.samples) == 1600


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        read_audio(tmp_path)


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples")
    with pytest.raises(AudioError, match="not a readable audio file"):
        read_audio(path)


def test_empty_audio(write_wav):
    with pytest.raises(AudioError, match=r"is empty \(0 samples\)"):
        read_audio(write_wav("empty.wav", np.zeros(0, dtype=np.float32), 16000))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(write_wav, bad):
    samples = tone(440, 0.1, 16000)
    samples[100] = bad
    path = write_wav("nan.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"1 NaN or infinite samples \(first at index 100\)"):
        read_audio(path)


def test_write_and_read_back(tmp_path):
    audio = Audio(tone(300, 0.25, 24000), 24000)
    read = read_audio(write_wav(tmp_path / "out.wav", audio))
    np.testing.assert_allclose(read.samples, audio.samples, atol=1e-4)
    with pytest.raises(AudioError, match="does not exist"):
        write_wav(tmp_path / "no" / "out.wav", audio)


def test_stream_writer_file_is_readable_while_it_grows(tmp_path):
    path = tmp_path / "stream.wav"
    with WavStreamWriter(path, 24000) as writer:
        writer.write(tone(200, 0.08, 24000))
        assert soundfile.info(str(path)).frames == 1920  # valid after the first chunk
        writer.write(tone(200, 0.08, 24000))
    assert soundfile.info(str(path)).frames == 3840


def test_audio_must_be_mono():
    with pytest.raises(AudioError, match="must be mono"):
        Audio(np.zeros((10, 2), dtype=np.float32), 24000)
