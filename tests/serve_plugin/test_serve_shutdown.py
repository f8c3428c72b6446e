"""Cancellation and shutdown on a server of its own that may speak 200 frames (16 s) per request.

A client that closes its stream early, and a WebSocket ``cancel``, stop generation within a frame of
the server noticing: the request ends cancelled after far fewer frames than the 200 it could make
(which also shows that audio leaves the server while it is being generated). SIGTERM then stops the
server with exit status 0, cancelling what is in flight.
"""

from __future__ import annotations

import signal

import httpx
import pytest
from serve_server import cancel_sentence_over_websocket, start_server, wait_for_log

LONG_FRAMES = 200


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("serve-long"), LONG_FRAMES, shutdown_grace_s=1)
    yield running
    running.stop()


def test_a_client_that_disconnects_cancels_its_request(long_server):
    body = {"model": "tts-1", "input": "A long story that nobody listens to.", "voice": "alloy",
            "response_format": "pcm"}
    with httpx.Client(base_url=long_server.url, headers=long_server.headers, timeout=120) as http:
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            request_id = response.headers["x-request-id"]
            first = next(response.iter_bytes())
            assert first  # audio arrived while the request was still generating
    match = wait_for_log(long_server, rf"request {request_id} \(speech\) (\w+) after (\d+) of at most (\d+) frames")
    outcome, frames, limit = match.group(1), int(match.group(2)), int(match.group(3))
    assert outcome == "cancelled" and limit == LONG_FRAMES
    assert frames < LONG_FRAMES // 2
    assert long_server.metric("csm_serve_jobs_total", kind="speech", outcome="cancelled") >= 1


def test_a_websocket_cancel_stops_the_sentence(long_server):
    _, match = cancel_sentence_over_websocket(long_server, LONG_FRAMES)
    assert match.group(1) == "cancelled" and int(match.group(2)) < LONG_FRAMES // 2


def test_sigterm_exits_cleanly_with_a_request_in_flight(long_server):
    body = {"model": "tts-1", "input": "Still talking when the server stops.", "voice": "alloy",
            "response_format": "pcm"}
    received = []
    with httpx.Client(base_url=long_server.url, headers=long_server.headers, timeout=120) as http:
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            request_id = response.headers["x-request-id"]
            stream = response.iter_bytes()
            received.append(next(stream))
            long_server.process.send_signal(signal.SIGTERM)
            try:
                for piece in stream:  # bounded by the server: it ends the stream as it stops
                    received.append(piece)
            except httpx.TransportError:
                pass  # the server closed the connection after its grace period
    assert long_server.process.wait(120) == 0
    match = wait_for_log(long_server, rf"request {request_id} \(speech\) (\w+) after (\d+) of")
    assert match.group(1) in ("done", "cancelled")
    log = long_server.log_text()
    assert "Traceback" not in log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{long_server.url}/health", timeout=5)
