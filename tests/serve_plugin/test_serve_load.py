"""Overload: a queue of 2 and more concurrent clients than it holds, twice over.

Memory is read from the server process's ``/proc/<pid>/status`` (VmRSS): refused requests must cost
nothing that stays, so the second wave of clients leaves the server no bigger than the first did.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from serve_server import FRAME_SAMPLES

CLIENTS = 10
MiB = 1 << 20
PEAK_GROWTH = 160 * MiB  # over the warmed-up server (flat at ~470 MiB on tiny when measured): no model copy, no leak
SECOND_WAVE_GROWTH = 32 * MiB  # what the second wave may add to the first: allocator noise, not a leak


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS line in /proc/{pid}/status")


def overload_wave(server, rss: list[int]) -> tuple[list[tuple[int, dict, bytes]], list[int]]:
    """``CLIENTS`` requests at once; ``/health`` polled and the server's RSS sampled until all have answered."""
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
            rss.append(rss_bytes(server.process.pid))
            if not any(thread.is_alive() for thread in threads):
                break
            threads[0].join(0.05)
    for thread in threads:
        thread.join(300)
    return results, health


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the server's memory from /proc (Linux)")
def test_a_full_queue_answers_429_and_every_accepted_request_completes(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as http:  # warm: models loaded, one utterance made
        assert http.post("/v1/audio/speech", json={"model": "tts-1", "input": "Warm up.", "voice": "alloy",
                                                    "response_format": "pcm"}).status_code == 200
    baseline = rss_bytes(server.process.pid)
    first_rss: list[int] = []
    results, health = overload_wave(server, first_rss)
    after_first = rss_bytes(server.process.pid)
    second_rss: list[int] = []
    second, second_health = overload_wave(server, second_rss)
    after_second = rss_bytes(server.process.pid)

    assert max(first_rss + second_rss) - baseline < PEAK_GROWTH, (baseline, max(first_rss + second_rss))
    assert after_second - after_first < SECOND_WAVE_GROWTH, (after_first, after_second)
    check_wave(server, results, health)
    check_wave(server, second, second_health)


def check_wave(server, results, health) -> None:
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
