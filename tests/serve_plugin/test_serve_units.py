"""The server's pure parts: sentences, instructions, the conversation store, options, formats, speed."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from csm_core.config import load_settings
from csm_core.errors import ConfigError
from csm_serve.conversations import ConversationStore
from csm_serve.errors import ApiError
from csm_serve.formats import encode_whole, open_encoder, wav_stream_header
from csm_serve.instructions import emotion_for
from csm_serve.options import serve_options
from csm_serve.sentences import SentenceBuffer
from csm_serve.speed import Stretcher, atempo_stages

EMOTIONS = ("happy", "calm", "excited", "sad", "angry", "neutral")


def test_sentences_are_handed_over_only_when_complete():
    buffer = SentenceBuffer(max_chars=4096)
    assert buffer.feed("Hello there. How") == ["Hello there."]
    assert buffer.feed(" are you?") == []  # no whitespace after "?" yet: "?!" may follow
    assert buffer.feed(" Pi is 3.") == ["How are you?"]
    assert buffer.feed("14! Done\nnext") == ["Pi is 3.14!", "Done"]
    assert buffer.flush() == "next" and buffer.flush() is None


def test_endless_text_is_cut_at_a_space():
    buffer = SentenceBuffer(max_chars=20)
    assert buffer.feed("word " * 10) == ["word word word word", "word word word word"]


@pytest.mark.parametrize(("text", "emotion", "noted"), [
    (None, None, False), ("Speak calmly.", "calm", False), ("happily", "happy", False),
    ("sad, then angry", "sad", True), ("Talk like a pirate", None, True),
])
def test_instructions_map_to_an_emotion_or_a_note(text, emotion, noted):
    use = emotion_for(text, EMOTIONS)
    assert use.emotion == emotion and (use.note is not None) == noted


def test_conversations_are_bounded_in_count_and_age():
    now = [0.0]
    store = ConversationStore(max_count=2, ttl_s=10, clock=lambda: now[0])
    a, _ = store.start()
    b, _ = store.start()
    store.get(a)  # a is now the most recently used
    c, _ = store.start()  # forgets b
    with pytest.raises(ApiError) as caught:
        store.get(b)
    assert caught.value.status == 404
    now[0] = 11.0
    with pytest.raises(ApiError):
        store.get(c)
    assert len(store) == 0


def test_serve_options_come_from_config_env_and_flags(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[options.serve]\nmax_queue = 3\nvoice_map = { alloy = 4 }\n')
    settings = load_settings(config, environ={})
    options = serve_options(settings, environ={"CSM_SERVE_API_KEY": "k" * 12}, port=9001)
    assert (options.max_queue, options.port, options.api_key, options.voice_map) == (3, 9001, "k" * 12, {"alloy": 4})
    with pytest.raises(ConfigError, match="without an API key"):
        serve_options(settings, environ={}, host="0.0.0.0")
    bad = tmp_path / "bad.toml"
    bad.write_text('[options.serve]\nvoice_map = { robot = 1 }\n')
    with pytest.raises(ConfigError, match="not an OpenAI voice name"):
        serve_options(load_settings(bad, environ={}), environ={})


def test_streamed_wav_and_whole_files_decode():
    chunk = (0.2 * np.sin(np.arange(1920) / 5)).astype(np.float32)
    encoder = open_encoder("wav", 24_000)
    data = b"".join(encoder.write(chunk) for _ in range(3)) + encoder.finish()
    assert data.startswith(wav_stream_header(24_000))
    samples, rate = soundfile.read(io.BytesIO(data))
    assert rate == 24_000 and len(samples) == 3 * 1920
    flac, _ = soundfile.read(io.BytesIO(encode_whole(np.tile(chunk, 3), 24_000, "flac")))
    assert len(flac) == 3 * 1920


def test_speed_stages_and_stretch():
    assert atempo_stages(0.25) == [0.5, 0.5] and atempo_stages(0.3) == [0.5, 0.6] and atempo_stages(4.0) == [4.0]
    stretcher = Stretcher(0.5, 24_000)
    out = sum(len(stretcher.push(np.zeros(1920, np.float32) + 0.1)) for _ in range(10)) + len(stretcher.finish())
    assert abs(out - 2 * 19_200) <= 1920
