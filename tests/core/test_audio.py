"""Audio I/O: any rate and channel count in, 24 kHz mono out; clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

import bad_audio_files as bad
from audio_signals import tone
from csm_core.audio import Audio, WavStreamWriter, read_audio, write_wav
from csm_core.audio_header import MAX_INPUT_SECONDS, MIN_INPUT_SECONDS, check_audio_file, wav_data
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


def test_empty_audio(write_wav, tmp_path):
    with pytest.raises(AudioError, match=r"is empty \(0 samples\)"):
        read_audio(write_wav("empty.wav", np.zeros(0, dtype=np.float32), 16000))
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero.wav' is empty \(0 bytes\)"):
        read_audio(tmp_path / "zero.wav")


@pytest.mark.parametrize(
    ("options", "held"),
    [
        ({"subtype": "PCM_16"}, 24000),
        ({"subtype": "FLOAT"}, 48000),
        ({"subtype": "PCM_16", "endian": "BIG"}, 24000),  # RIFX
        ({"subtype": "PCM_16", "format": "RF64"}, 24000),
        ({"subtype": "PCM_16", "format": "WAV", "channels": 2}, 48000),
    ],
)
def test_a_truncated_wav_is_refused_from_its_header(tmp_path, options, held):
    """libsndfile reads what is there without a word; the RIFF data chunk says how much should be."""
    options = dict(options)
    full = bad.wav(tmp_path / "full.wav", 1.0, 24000, channels=options.pop("channels", 1), **options)
    assert wav_data(full).declared == wav_data(full).held == 2 * held
    cut = bad.truncated(tmp_path / "cut.wav", full, keep=0.5)
    data = wav_data(cut)
    assert data.truncated and data.declared == 2 * held and data.held < held + 100
    with pytest.raises(AudioError, match=rf"cut.wav' is truncated: its header promises {2 * held} bytes of audio \(1 s\) "
                       r"but the file holds \d+ \(0.\d+ s\).*copy or export it again"):
        read_audio(cut)


def test_a_header_that_declares_ten_minutes_over_half_a_second_is_truncated(tmp_path):
    path = bad.lying_header_wav(tmp_path / "liar.wav", declared_seconds=600, seconds=0.5)
    assert soundfile.info(str(path)).frames == 12000  # what libsndfile alone would read, silently
    with pytest.raises(AudioError, match=r"is truncated: its header promises 28800000 bytes of audio \(600 s\)"):
        read_audio(path)


def test_a_truncated_flac_is_refused_when_decoded(tmp_path):
    full = bad.wav(tmp_path / "full.flac", 1.0, 24000)
    cut = bad.truncated(tmp_path / "cut.flac", full, keep=0.5)
    assert soundfile.info(str(cut)).frames == 24000  # STREAMINFO still promises the whole clip
    with pytest.raises(AudioError, match=r"cut.flac' (cannot be decoded .*truncated or corrupt|is truncated)"):
        read_audio(cut)


def test_too_short_and_too_long_are_refused_with_the_limit(tmp_path):
    with pytest.raises(AudioError, match=rf"is too short: 0.01 s \(240 samples at 24000 Hz\); the minimum is "
                       rf"{MIN_INPUT_SECONDS:g} s \(one 80 ms codec frame\)"):
        read_audio(bad.wav(tmp_path / "click.wav", 0.01, 24000))
    assert read_audio(bad.wav(tmp_path / "ok.wav", MIN_INPUT_SECONDS, 24000)).duration_s == pytest.approx(0.08)
    # a complete 10-minute WAV (sparse on disk) is refused from its header
    long = bad.long_silent_wav(tmp_path / "long.wav", 600, rate=48000)
    assert soundfile.info(str(long)).duration == 600
    with pytest.raises(AudioError, match=rf"long.wav' is too long: 600 s by its header; "
                       rf"the maximum is {MAX_INPUT_SECONDS:g} s"):
        read_audio(long)
    # the limits are parameters
    with pytest.raises(AudioError, match=r"the maximum is 0.2 s"):
        read_audio(bad.wav(tmp_path / "a.wav", 0.3, 16000), max_seconds=0.2)
    with pytest.raises(AudioError, match=r"the minimum is 0.5 s: record a longer clip"):
        read_audio(tmp_path / "a.wav", min_seconds=0.5)


@pytest.mark.parametrize(("rate", "channels", "message"), [
    (4000, 1, r"has a sample rate of 4000 Hz: the rate must be between 8000 and 192000 Hz"),
    (384000, 1, r"has a sample rate of 384000 Hz"),
    (16000, 10, r"has 10 channels: at most 8 are taken; mix it down to mono first"),
])
def test_rates_and_channels_outside_the_limits(tmp_path, rate, channels, message):
    with pytest.raises(AudioError, match=message):
        read_audio(bad.wav(tmp_path / "x.wav", 0.2, rate, channels=channels))


@pytest.mark.parametrize(("name", "rate", "channels", "options"), [
    ("stereo.wav", 44100, 2, {}),
    ("mono.flac", 22050, 1, {}),
    ("stereo.flac", 48000, 2, {}),
    ("odd.wav", 11025, 1, {"subtype": "PCM_U8"}),
    ("phone.wav", 8000, 1, {"subtype": "ULAW"}),
    ("surround.wav", 32000, 6, {"subtype": "PCM_24"}),
    ("speech.ogg", 16000, 1, {}),
])
def test_ordinary_files_still_read(tmp_path, name, rate, channels, options):
    audio = read_audio(bad.wav(tmp_path / name, 0.3, rate, channels=channels, **options))
    assert audio.sample_rate == 24000 and abs(audio.duration_s - 0.3) < 2e-3
    assert check_audio_file(tmp_path / name).channels == channels


def test_errors_name_what_the_caller_says(tmp_path):
    with pytest.raises(AudioError, match=r"^voice.audio 'v.wav' is too short"):
        read_audio(bad.wav(tmp_path / "v.wav", 0.01, 16000), what="voice.audio 'v.wav'")


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
    with pytest.raises(AudioError, match="it is a directory"):
        write_wav(tmp_path, audio)


def test_write_wav_is_atomic(tmp_path, monkeypatch):
    """Killed between the temporary file and the rename: the old file is whole, no temporary is left."""
    import os

    path = write_wav(tmp_path / "out.wav", Audio(tone(300, 0.25, 24000), 24000))
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_wav(path, Audio(tone(500, 0.5, 24000), 24000))
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.wav"]


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
