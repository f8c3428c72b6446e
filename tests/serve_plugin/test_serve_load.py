"""Overload: a queue of 2 and more concurrent clients than it holds."""

from __future__ import annotations

import threading

import httpx
from serve_server import FRAME_SAMPLES

CLIENTS = 10


def test_a_full_queue_answers_429_and_every_accepted_request_completes(server):
    barrier = threading.Barrier(CLIENTS)
    results: list[tuple[int, dict, bytes]] = []
    lock = threading.Lock()

    def speak(index: int) -> None:
        body = {"model": "tts-1", "input": f"Client number {index} speaking.", "voice": "alloy",
                "response_format": "pcm"}
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as http:
            barrier.wait(timeout=60)
            response = http.post("/v1/audio/speech", json=body)
        with lock:
            results.append((response.status_code, dict(response.headers), response.content))

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    health = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(200):  # bounded: /health answers while the worker is busy
            health.append(http.get("/health").status_code)
            if not any(thread.is_alive() for thread in threads):
                break
            threads[0].join(0.05)
    for thread in threads:
        thread.join(300)
    statuses = sorted(status for status, _, _ in results)
    assert len(results) == CLIENTS
    assert set(statuses) <= {200, 429}
    assert 429 in statuses and 200 in statuses
    for status, headers, content in results:
        if status == 429:
            assert headers["retry-after"] == "2"
            assert b'"code":"queue_full"' in content or b'"code": "queue_full"' in content
        else:
            assert len(content) > 0 and len(content) % (2 * FRAME_SAMPLES) == 0
    assert health and set(health) == {200}
    assert server.metric("csm_serve_requests_total", endpoint="/v1/audio/speech", status="429") >= statuses.count(429)
