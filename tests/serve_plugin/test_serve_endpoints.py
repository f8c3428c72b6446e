"""/api/generate, /v1/conversation/turn and the WebSocket /v1/audio/speech/stream."""

from __future__ import annotations

import base64
import io
import json

import pytest
import soundfile
import websockets.sync.client
from serve_server import FRAME_SAMPLES, SERVER_FRAMES, wav_bytes


def test_generate_returns_a_whole_wav(http):
    response = http.post("/api/generate", json={"text": "EchoForge style.", "speaker_id": 1, "temperature": 0.5,
                                                "top_k": 10, "style": "happy", "device": "cpu"})
    assert response.status_code == 200, response.text
    samples, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 24_000 and len(samples) == int(response.headers["x-frames"]) * FRAME_SAMPLES
    assert response.headers["x-emotion"] == "happy"


def test_generate_refuses_another_device_and_unknown_styles(http):
    response = http.post("/api/generate", json={"text": "Hi.", "device": "cuda"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "device_mismatch"
    response = http.post("/api/generate", json={"text": "Hi.", "style": "smug"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_emotion"


def test_a_conversation_keeps_its_turns(http):
    first = http.post("/v1/conversation/turn", data={"text": "How are you today?"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["turn"] == 1 and body["transcript"] == "How are you today?"
    assert body["reply"] and body["emotion"]
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(body["audio"])))
    assert rate == 24_000 and len(samples) == body["frames"] * FRAME_SAMPLES
    second = http.post("/v1/conversation/turn", files={"file": ("me.wav", wav_bytes(), "audio/wav")},
                       data={"conversation_id": body["conversation_id"], "response_format": "pcm"})
    assert second.status_code == 200, second.text
    assert second.json()["turn"] == 2 and second.json()["sentiment"]["label"]
    assert len(base64.b64decode(second.json()["audio"])) == second.json()["frames"] * FRAME_SAMPLES * 2


def test_a_conversation_turn_streams_as_events(http):
    with http.stream("POST", "/v1/conversation/turn", data={"text": "Stream it.", "stream": "true",
                                                            "response_format": "pcm"}) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "conversation.audio.delta")
    assert events[-1]["type"] == "conversation.turn.done"
    assert len(audio) == events[-1]["frames"] * FRAME_SAMPLES * 2 and events[-1]["reply"]


def test_unknown_conversations_and_bad_turns_are_refused(http):
    response = http.post("/v1/conversation/turn", data={"text": "Hi.", "conversation_id": "conv_" + "0" * 32})
    assert response.status_code == 404 and response.json()["error"]["code"] == "conversation_not_found"
    response = http.post("/v1/conversation/turn", data={"conversation_id": "../../etc"})
    assert response.status_code == 400  # neither text nor audio


def receive_until(ws, kind: str) -> list:
    messages = []
    for _ in range(2000):  # bounded
        message = ws.recv(timeout=120)
        messages.append(message)
        if isinstance(message, str) and json.loads(message)["type"] == kind:
            return messages
    raise AssertionError(f"no {kind} message")


def test_websocket_speaks_each_sentence_when_it_is_complete(server):
    url = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
    with websockets.sync.client.connect(url, additional_headers=server.headers) as ws:
        ws.send(json.dumps({"type": "text", "text": "Hello there. How"}))
        started = receive_until(ws, "sentence.started")
        assert json.loads(started[-1])["text"] == "Hello there."  # spoken before the rest arrives
        first = receive_until(ws, "sentence.done")
        ws.send(json.dumps({"type": "text", "text": " are you?"}))
        ws.send(json.dumps({"type": "close"}))
        rest = receive_until(ws, "done")
    done = json.loads(first[-1])
    audio = [m for m in first if isinstance(m, bytes)]
    assert sum(len(m) for m in audio) == done["frames"] * FRAME_SAMPLES * 2 and 1 <= done["frames"] <= SERVER_FRAMES
    texts = [json.loads(m) for m in rest if isinstance(m, str)]
    assert {"type": "sentence.started", "index": 1, "text": "How are you?"}.items() <= texts[0].items()
    assert any(isinstance(m, bytes) for m in rest)


def test_websocket_reports_bad_messages_and_keeps_going(server):
    url = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
    with websockets.sync.client.connect(url, additional_headers=server.headers) as ws:
        ws.send("not json")
        assert json.loads(ws.recv(timeout=60))["error"]["param"] == "type"
        ws.send(json.dumps({"type": "config", "voice": "nobody"}))
        assert json.loads(ws.recv(timeout=60))["error"]["code"] == "voice_not_found"
        ws.send(json.dumps({"type": "close"}))
        assert json.loads(ws.recv(timeout=60)) == {"type": "done"}


def test_websocket_needs_the_key(server):
    url = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
    with websockets.sync.client.connect(url) as ws:
        assert json.loads(ws.recv(timeout=60))["error"]["type"] == "authentication_error"
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=60)
    assert closed.value.rcvd.code == 1008
