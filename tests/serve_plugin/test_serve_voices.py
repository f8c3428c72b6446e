"""Cloned voices: create from a clip, list, use by name from every endpoint, delete; names validated."""

from __future__ import annotations

import json

import openai
import pytest
import websockets.sync.client
from serve_server import wav_bytes


def create(http, name: str, clip: bytes | None = None, transcript: str = "A short test clip."):
    files = {"file": ("clip.wav", clip if clip is not None else wav_bytes(), "audio/wav")}
    return http.post("/v1/audio/voices", files=files, data={"name": name, "transcript": transcript})


def test_a_cloned_voice_is_usable_everywhere_then_deleted(server, http, client):
    created = create(http, "test-voice_1")
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "test-voice_1" and created.json()["seconds"] == pytest.approx(1.0)
    assert "test-voice_1" in http.get("/v1/audio/voices").json()["voices"]

    for voice in ("test-voice_1", {"id": "test-voice_1"}):
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", input="In my own voice.", voice=voice, response_format="pcm"
        ) as response:
            assert response.headers["x-voice"] == "test-voice_1"
            assert len(response.read()) > 0
    generated = http.post("/api/generate", json={"text": "Generated in it.", "voice": "test-voice_1"})
    assert generated.status_code == 200 and generated.headers["content-type"] == "audio/wav"
    url = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
    with websockets.sync.client.connect(url, additional_headers=server.headers) as ws:
        ws.send(json.dumps({"type": "config", "voice": "test-voice_1"}))
        ws.send(json.dumps({"type": "text", "text": "Over the socket."}))
        ws.send(json.dumps({"type": "close"}))
        messages = _until_done(ws)
    assert any(isinstance(m, bytes) for m in messages)

    deleted = http.delete("/v1/audio/voices/test-voice_1")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert "test-voice_1" not in http.get("/v1/audio/voices").json()["voices"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", input="Gone.", voice="test-voice_1")
    assert caught.value.body["code"] == "voice_not_found"
    assert http.delete("/v1/audio/voices/test-voice_1").status_code == 404


def _until_done(ws) -> list:
    messages = []
    for _ in range(1000):  # bounded: a few sentences of at most 16 frames each
        message = ws.recv(timeout=120)
        messages.append(message)
        if isinstance(message, str) and json.loads(message)["type"] == "done":
            return messages
    raise AssertionError("no done message")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 65, "sp ace", ""])
def test_invalid_names_are_refused(http, name):
    response = create(http, name)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "name"


def test_taken_names_are_409(http):
    assert create(http, "alloy").status_code == 409
    assert create(http, "twice").status_code == 201
    again = create(http, "twice")
    assert again.status_code == 409 and again.json()["error"]["code"] == "voice_exists"
    assert http.delete("/v1/audio/voices/twice").status_code == 200


def test_a_clip_that_is_not_audio_is_refused(http):
    response = create(http, "noise", clip=b"this is not a wav file at all")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_audio"
    assert "noise" not in http.get("/v1/audio/voices").json()["voices"]


def test_a_clip_over_the_duration_limit_is_refused(http):
    response = create(http, "long", clip=wav_bytes(seconds=61.0, rate=8000))
    assert response.status_code == 400 and "long" in response.json()["error"]["message"]
