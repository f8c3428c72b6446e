"""POST /v1/audio/speech through the real openai client: every format, streaming, SSE, errors."""

from __future__ import annotations

import base64
import io
import json

import av
import numpy as np
import openai
import pytest
import soundfile
from serve_server import FRAME_SAMPLES, SERVER_FRAMES

LOSSY_PADDING = 4096  # encoder delay and last-frame padding of mp3/aac/opus, in samples at 24 kHz


def frames_done(server) -> float:
    return server.metric("csm_serve_frames_generated_total", kind="speech")


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, 24_000
    if fmt in ("wav", "flac"):
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        return samples, rate
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    return np.concatenate(frames), rate


CONTENT_TYPES = {"pcm": "audio/pcm", "wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg",
                 "opus": "audio/ogg", "aac": "audio/aac"}


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "opus", "aac"])
def test_every_format_decodes_to_the_frames_generated(server, client, fmt):
    before = frames_done(server)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", input="Hello there, how are you?", voice="alloy", response_format=fmt
    ) as response:
        assert response.headers["content-type"].startswith(CONTENT_TYPES[fmt])
        data = response.read()
    frames = frames_done(server) - before
    assert 1 <= frames <= SERVER_FRAMES
    samples, rate = decode(data, fmt)
    expected = frames * FRAME_SAMPLES
    if fmt in ("wav", "pcm", "flac"):
        assert rate == 24_000
        assert len(samples) == expected
    elif fmt == "opus":  # Opus decoders always play at 48 kHz
        assert rate == 48_000
        assert abs(len(samples) / 2 - expected) <= LOSSY_PADDING
    else:
        assert rate == 24_000
        assert abs(len(samples) - expected) <= LOSSY_PADDING
    assert np.isfinite(samples).all() and np.abs(samples).max() > 0


def test_audio_streams_frame_by_frame(client):
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", input="Streaming, one frame at a time.", voice="echo", response_format="pcm"
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        pieces = [piece for piece in response.iter_bytes() if piece]
    data = b"".join(pieces)
    assert len(pieces) > 1  # sent as made, not as one body (test_serve_shutdown shows it arrives early)
    assert len(data) % (2 * FRAME_SAMPLES) == 0 and len(data) > 0


def test_sse_events_carry_the_audio_and_the_usage(server, http):
    body = {"model": "gpt-4o-mini-tts", "input": "Events, please.", "voice": "coral",
            "response_format": "pcm", "stream_format": "sse"}
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done"
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * len(deltas)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    usage = events[-1]["usage"]
    assert 1 <= usage["output_tokens"] <= SERVER_FRAMES
    assert len(audio) == usage["output_tokens"] * FRAME_SAMPLES * 2
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["input_tokens"] > 0


def test_sse_wav_deltas_join_into_a_wav_file(http):
    body = {"model": "csm", "input": "A file in pieces.", "voice": "default", "response_format": "wav",
            "stream_format": "sse"}
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    samples, rate = soundfile.read(io.BytesIO(audio))
    assert rate == 24_000 and len(samples) == events[-1]["usage"]["output_tokens"] * FRAME_SAMPLES


def test_speed_stretches_the_audio(server, client):
    before = frames_done(server)
    data = client.audio.speech.create(model="tts-1", input="Faster now.", voice="alloy", response_format="pcm",
                                      speed=2.0).read()
    frames = frames_done(server) - before
    samples = len(data) // 2
    assert abs(samples - frames * FRAME_SAMPLES / 2) <= FRAME_SAMPLES  # atempo keeps the pitch, halves the time


def test_instructions_choose_an_emotion_or_say_they_could_not(client):
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", input="Stay calm.", voice="sage", response_format="pcm",
        instructions="Speak calmly and slowly."
    ) as response:
        assert response.headers["x-emotion"] == "calm"
        assert "x-instructions-note" not in response.headers
        response.read()
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", input="Like a pirate.", voice="sage", response_format="pcm",
        instructions="Talk like a pirate."
    ) as response:
        assert response.headers["x-emotion"] == "none"
        assert "name no emotion" in response.headers["x-instructions-note"]
        response.read()


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"input": "x" * 4097}, "input", "string_above_max_length"),
        ({"voice": "nobody"}, "voice", "voice_not_found"),
        ({"response_format": "ogg"}, "response_format", "unsupported_format"),
        ({"speed": 9.0}, "speed", "invalid_value"),
        ({"speed": 0.1}, "speed", "invalid_value"),
        ({"model": "whisper-1"}, "model", "model_not_found"),
        ({"input": "   "}, "input", "invalid_value"),
    ],
)
def test_bad_requests_are_openai_shaped_400s(client, changes, param, code):
    request = {"model": "tts-1", "input": "Hello.", "voice": "alloy", "response_format": "wav", **changes}
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(**request)
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


def test_unknown_fields_and_routes_are_refused_in_openai_shape(http):
    response = http.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy", "pitch": 2})
    assert response.status_code == 400 and response.json()["error"]["param"] == "pitch"
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_a_body_over_the_limit_is_413(http):
    response = http.post("/v1/audio/speech", content=b"{" + b" " * 70_000 + b"}",
                         headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_wrong_or_missing_api_key_is_401(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.audio.speech.create(model="tts-1", input="hi", voice="alloy")
    assert caught.value.body["code"] == "invalid_api_key"
    import httpx

    response = httpx.post(f"{server.url}/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # health needs no key


def test_a_failing_request_fails_alone(client):
    # passes the 4096-character check, but does not fit the tiny model's 512 positions: refused on the worker
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", input="word " * 600, voice="alloy", response_format="wav")
    assert caught.value.body["code"] == "generation_refused"
    assert "positions" in caught.value.body["message"]
    data = client.audio.speech.create(model="tts-1", input="Still here.", voice="alloy", response_format="pcm").read()
    assert len(data) > 0


def test_models_and_readiness(http):
    assert "tts-1" in [m["id"] for m in http.get("/v1/models").json()["data"]]
    ready = http.get("/ready").json()
    assert ready["ready"] is True and ready["sample_rate"] == 24_000 and ready["max_frames"] == SERVER_FRAMES
    assert http.get("/docs").status_code == 200
    assert "/v1/audio/speech" in http.get("/openapi.json").json()["paths"]


def test_metrics_count_requests_by_route_and_status(server, http):
    http.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "nobody"})
    text = http.get("/metrics").text
    assert 'csm_serve_requests_total{endpoint="/v1/audio/speech",status="400"}' in text
    assert "csm_serve_time_to_first_audio_seconds_bucket" in text
    assert "csm_serve_real_time_factor_count" in text and "csm_serve_queue_depth" in text
    assert "csm_serve_frames_per_second_count" in text and "csm_serve_active_requests" in text
