"""``csmctl serve --ray --replicas 2`` (``--preset tiny``): the same app on Ray Serve, driven over HTTP
with the clients of the single server's tests.

One local Ray for the module (the CLI starts it on this machine's CPUs; two replicas of one CPU
each), then: the openai client, SSE and a WebSocket cancel through Ray's proxy; requests spread over
both replicas (``X-CSM-Replica``); an overload waits in Ray's proxy (or gets Ray's 429 with
Retry-After), never overflowing a replica's own queue; killing one replica's actor mid-stream fails only the requests it held, each with
a clear error and none hanging, while the others complete and Ray starts a new replica; SIGTERM
stops everything with status 0.
"""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile

pytest.importorskip("ray.serve", reason="needs the ray extra (pip install 'csm-multi[ray]')")
import openai  # noqa: E402
from ray_serve_server import ReplicaKiller, start_ray_server  # noqa: E402
from serve_server import FRAME_SAMPLES, cancel_sentence_over_websocket, wait_for_log  # noqa: E402

pytestmark = pytest.mark.slow

FRAMES = 48  # ~2 s of generation per request on a shared 2-core CPU: long enough to kill one mid-stream
FRAME_BYTES = 2 * FRAME_SAMPLES
RETRY_AFTER = 2


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    # max_queue 2: a replica takes 2 requests at once (Ray's max_ongoing_requests), the proxy holds 6 more
    running = start_ray_server(tmp_path_factory.mktemp("ray-serve"), FRAMES, replicas=2, max_queue=2,
                               retry_after_s=RETRY_AFTER, shutdown_grace_s=2)
    yield running
    running.stop()


@pytest.fixture
def client(ray_server):
    return openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key=ray_server.api_key, max_retries=0, timeout=120)


def test_requests_spread_over_both_replicas(ray_server, client):
    def speak(index: int):
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", input=f"Client {index} speaking.", voice="alloy", response_format="pcm") as response:
            return response.headers.get("x-csm-replica"), response.headers.get_list("x-request-id"), response.read()

    # 4 at once: one replica takes at most max_queue = 2, so both get some
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(speak, range(4)))
    replicas = {replica for replica, _, _ in answers}
    assert len(replicas) == 2 and all(re.fullmatch(r"CsmServe#\w+", r) for r in replicas)
    for _, request_ids, audio in answers:
        assert len(request_ids) == 1  # Ray's proxy and the app agree on one id
        assert len(audio) > 0 and len(audio) % FRAME_BYTES == 0
    request_id = answers[0][1][0]
    wait_for_log(ray_server, rf"request {re.escape(request_id)} \(speech\) done after \d+ of at most {FRAMES} frames")
    assert [m.id for m in client.models.list().data][:2] == ["csm", "tts-1"]


def test_formats_and_sse_through_the_proxy(ray_server, client):
    wav = client.audio.speech.create(model="tts-1", input="A whole file.", voice="alloy", response_format="wav")
    samples, rate = soundfile.read(io.BytesIO(wav.content), dtype="float32")
    assert rate == 24_000 and len(samples) > 0 and len(samples) % FRAME_SAMPLES == 0
    body = {"model": "tts-1", "input": "Events please.", "voice": "alloy", "response_format": "pcm",
            "stream_format": "sse"}
    with httpx.Client(base_url=ray_server.url, headers=ray_server.headers, timeout=120) as http:
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-csm-replica"].startswith("CsmServe#")
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert events[-1]["type"] == "speech.audio.done"
    assert len(audio) == events[-1]["usage"]["output_tokens"] * FRAME_BYTES


def test_a_websocket_cancel_stops_the_sentence(ray_server):
    handshake, match = cancel_sentence_over_websocket(ray_server, FRAMES)
    assert handshake["x-csm-replica"].startswith("CsmServe#")
    assert match.group(1) == "cancelled" and int(match.group(2)) < FRAMES


def test_an_overload_waits_in_ray_not_in_a_replica_queue(ray_server):
    clients = 8  # 2 replicas take 2 each (max_ongoing_requests = max_queue): Ray's proxy holds the rest
    barrier = threading.Barrier(clients)

    def speak(index: int) -> httpx.Response:
        body = {"model": "tts-1", "input": f"Client number {index}.", "voice": "alloy", "response_format": "pcm"}
        with httpx.Client(base_url=ray_server.url, headers=ray_server.headers, timeout=300) as http:
            barrier.wait(timeout=60)
            return http.post("/v1/audio/speech", json=body)

    with ThreadPoolExecutor(clients) as pool:
        responses = list(pool.map(speak, range(clients)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and 200 in statuses, statuses
    for response in responses:
        if response.status_code == 429:  # Ray's proxy refused it (max_queued_requests), with Retry-After
            assert response.headers["retry-after"] == str(RETRY_AFTER)
            assert "backpressure" in response.json()["error"]["message"]  # Ray's, not a replica's queue_full
        if response.status_code == 200:
            assert len(response.content) % FRAME_BYTES == 0 and response.content


def test_killing_a_replica_fails_only_its_requests(ray_server):
    killer = ReplicaKiller(ray_server)
    try:
        first_audio = threading.Event()
        victim: list[str] = []
        results: dict[int, dict] = {}

        def stream(index: int) -> None:
            result = results[index] = {"replica": None, "status": None, "bytes": 0, "error": None}
            body = {"model": "tts-1", "input": f"A long story number {index}.", "voice": "alloy",
                    "response_format": "pcm"}
            try:
                with httpx.Client(base_url=ray_server.url, headers=ray_server.headers, timeout=120) as http:
                    with http.stream("POST", "/v1/audio/speech", json=body) as response:
                        result["status"], result["replica"] = response.status_code, response.headers.get("x-csm-replica")
                        if response.status_code != 200:
                            result["body"] = json.loads(response.read())
                            return
                        for data in response.iter_bytes():
                            result["bytes"] += len(data)
                            if not first_audio.is_set():
                                victim.append(result["replica"])
                                first_audio.set()
            except httpx.TransportError as exc:
                result["error"] = exc
            finally:
                result["ended"] = time.monotonic()

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]  # > 2: both replicas hold some
        for thread in threads:
            thread.start()
        assert first_audio.wait(120)
        answer = killer.kill(victim[0])
        killed_at = time.monotonic()
        assert answer.startswith("killed"), answer
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)  # nothing hangs
    finally:
        killer.close()

    failed, completed = [], []
    for result in results.values():
        if result["status"] == 200 and result["error"] is None:
            completed.append(result)
            assert result["replica"] != victim[0] and result["bytes"] % FRAME_BYTES == 0 and result["bytes"] > 0
        else:
            failed.append(result)
            assert result["ended"] - killed_at < 60
            if result["error"] is not None:  # the response had started: the stream is cut short
                assert result["replica"] == victim[0] and isinstance(result["error"], httpx.RemoteProtocolError)
            else:  # it waited in the dead replica: the proxy says so
                assert result["status"] == 503, result
                assert result["body"]["error"]["code"] == "replica_unavailable"
    assert failed and completed, results

    # Ray starts a replica in place of the dead one; both answer again
    seen: set[str] = set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        response = httpx.get(f"{ray_server.url}/ready", timeout=30)
        if response.status_code == 200:
            seen.add(response.headers["x-csm-replica"])
        if len(seen - {victim[0]}) >= 2:
            break
        time.sleep(0.2)
    assert victim[0] not in seen and len(seen) >= 2, seen


def test_sigterm_stops_the_ray_server(ray_server):
    ray_server.process.send_signal(signal.SIGTERM)
    assert ray_server.process.wait(120) == 0
    assert "csmctl serve --ray: stopping" in ray_server.log_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{ray_server.url}/health", timeout=5)


def test_the_app_builder_for_serve_run_and_config_files():
    from ray.serve import Application

    from csm_core.errors import ConfigError
    from csm_serve.ray_app import app_builder

    assert isinstance(app_builder({"preset": "tiny", "device": "cpu", "max_new_tokens": "8"}), Application)
    with pytest.raises(ConfigError, match="unknown argument 'presets'"):
        app_builder({"presets": "tiny"})
