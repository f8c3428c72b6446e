"""``[options.ray] layout = "stages"`` (``--preset tiny``): the transcriber, sentiment, llm and tts
stages in Ray Serve deployments of their own, joined to the front replica with deployment handles.

One local Ray for the module (the CLI starts it): a conversation turn with audio runs the tokenizer
in the front replica and the four other stages in theirs; speech streams from the tts deployment
frame by frame, and a WebSocket cancel stops the remote generation.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time

import httpx
import pytest
import soundfile

pytest.importorskip("ray.serve", reason="needs the ray extra (pip install 'csm-multi[ray]')")
import websockets.sync.client  # noqa: E402
from ray_serve_server import start_ray_server  # noqa: E402
from serve_server import FRAME_SAMPLES, wav_bytes  # noqa: E402

pytestmark = pytest.mark.slow

FRAMES = 48
STAGES = ("transcriber", "sentiment", "llm", "tts")

CONFIG = """
[options.ray]
layout = "stages"
num_cpus = 0.4

[options.ray.stages.transcriber]
num_cpus = 0.2
[options.ray.stages.sentiment]
num_cpus = 0.2
[options.ray.stages.llm]
num_cpus = 0.2
[options.ray.stages.tts]
num_cpus = 0.4
"""


@pytest.fixture(scope="module")
def stage_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-stages")
    config = folder / "csm.toml"
    config.write_text(CONFIG)
    running = start_ray_server(folder, FRAMES, replicas=None, config=config, max_queue=2, shutdown_grace_s=2)
    yield running
    running.stop()


@pytest.fixture
def http(stage_server):
    with httpx.Client(base_url=stage_server.url, headers=stage_server.headers, timeout=180) as session:
        yield session


def test_every_stage_runs_in_a_deployment_of_its_own(stage_server):
    log = stage_server.log_text()
    for stage in STAGES:  # each stage replica logged its load
        assert re.search(rf"\(ServeReplica:csm:CsmStage-{stage} pid=\d+\).*{stage} stage '\w+' loaded", log), stage
    assert re.search(r"\(ServeReplica:csm:CsmServe pid=\d+\).*loading tokenizer stage 'mimi'", log)
    assert not re.search(r"\(ServeReplica:csm:CsmServe pid=\d+\).*loading tts stage 'csm'", log)


def test_a_conversation_turn_with_audio_crosses_the_stage_deployments(stage_server, http):
    first = http.post("/v1/conversation/turn", files={"file": ("me.wav", wav_bytes(), "audio/wav")},
                      data={"response_format": "wav"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert first.headers["x-csm-replica"].startswith("CsmServe#")
    assert body["turn"] == 1 and body["reply"] and body["sentiment"]["label"]
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(body["audio"])))
    assert rate == 24_000 and len(samples) == body["frames"] * FRAME_SAMPLES and body["frames"] >= 1
    log = stage_server.log_text()  # the front replica built a handle-backed stage for each remote one
    for stage in STAGES:
        assert re.search(rf"\(ServeReplica:csm:CsmServe pid=\d+\).*loading {stage} stage 'ray-remote'", log), stage
    second = http.post("/v1/conversation/turn", data={"conversation_id": body["conversation_id"],
                                                      "text": "And then?", "response_format": "pcm"})
    assert second.status_code == 200 and second.json()["turn"] == 2


def test_speech_streams_from_the_tts_deployment(http):
    with http.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "input": "Streamed from afar.",
                                                        "voice": "alloy", "response_format": "pcm"}) as response:
        assert response.status_code == 200
        pieces = [len(piece) for piece in response.iter_bytes()]
    assert sum(pieces) % (2 * FRAME_SAMPLES) == 0 and len(pieces) > 1


def test_a_websocket_cancel_stops_the_remote_generation(stage_server):
    url = stage_server.url.replace("http", "ws") + "/v1/audio/speech/stream"
    with websockets.sync.client.connect(url, additional_headers=stage_server.headers) as ws:
        ws.send(json.dumps({"type": "text", "text": "This sentence would go on for a long while. "}))
        started = json.loads(ws.recv(timeout=120))
        assert isinstance(ws.recv(timeout=120), bytes)
        ws.send(json.dumps({"type": "cancel"}))
        for _ in range(FRAMES + 2):
            message = ws.recv(timeout=120)
            if isinstance(message, str):
                break
        assert json.loads(message) == {"type": "cancelled", "index": 0}
    pattern = rf"request {started['request_id']} \(websocket\) (\w+) after (\d+) of"
    for _ in range(600):
        match = re.search(pattern, stage_server.log_text())
        if match:
            break
        time.sleep(0.1)
    assert match and match.group(1) == "cancelled" and int(match.group(2)) < FRAMES
    for _ in range(600):  # the tts replica's generator was cancelled too (Ray's access log of the call)
        if re.search(r"\(ServeReplica:csm:CsmStage-tts pid=\d+\).*CALL speak CANCELLED", stage_server.log_text()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the tts deployment's speak call was not cancelled")
