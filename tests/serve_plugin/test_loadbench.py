"""``csmctl bench serve``: a real run against a real server it starts (``--preset tiny``, loopback), and
its refusals of bad input (before any server starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FRAME_SECONDS = 0.08
FRAME_BYTES = 3840  # 1920 samples of s16le


def _run(*args: str, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSM_")}
    env["CSM_CACHE_DIR"] = str(cwd / "cache")
    env["CSM_OPTIONS__SERVE__VOICES_DIR"] = str(cwd / "voices")
    return subprocess.run([sys.executable, "-m", "csm_core.cli", "bench", "serve", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bench_serve_writes_consistent_reports_of_two_server_settings_side_by_side(tmp_path):
    out = tmp_path / "results"
    result = _run("--preset", "tiny", "--device", "cpu", "--threads", "1", "--clients", "1,2",
                  "--requests-per-client", "1", "--max-new-tokens", "6", "--max-rows", "1,2", "--out", str(out),
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [out / "bench-serve.json", out / "bench-serve.md", out / "bench-serve.png"]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
        assert f"wrote {path}" in result.stdout
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p not in paths]  # no temporaries left behind

    document = json.loads(paths[0].read_text())
    assert document["schema"] == "csm-multi-bench-serve/2"
    run = document["run"]
    assert run["started_server"] is True and run["preset"] == "tiny" and run["max_new_tokens"] == 6
    assert run["clients"] == [1, 2] and run["requests_per_client"] == 1 and run["max_rows"] == [1, 2]
    assert run["response_format"] == "pcm" and run["stream_format"] == "audio"
    runs = document["runs"]
    assert [r["max_rows"] for r in runs] == [1, 2]
    assert runs[0]["server_pid"] != runs[1]["server_pid"]  # a server of its own per setting
    for one in runs:
        assert one["server_peak_rss_bytes"] > 0
        check_levels(one)
    # side by side: each setting's throughput over the first one's, per client level
    assert [row["clients"] for row in document["comparison"]] == [1, 2]
    for index, row in enumerate(document["comparison"]):
        first, second = row["runs"]
        assert first["throughput_ratio"] == pytest.approx(1.0)
        assert second["throughput_ratio"] == pytest.approx(
            runs[1]["levels"][index]["audio_seconds_per_second"] / runs[0]["levels"][index]["audio_seconds_per_second"])
        assert second["time_to_first_audio_p95_s"] == runs[1]["levels"][index]["time_to_first_audio_s"]["p95"]

    text = paths[1].read_text()
    assert "Side by side" in text and "#### max_rows 1" in text and "#### max_rows 2" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 + 2 * 2  # the comparison's two rows, then each setting's two
    assert rows[-1].startswith("| 2 | 2 / 0 / 0 |")


def check_levels(one: dict) -> None:
    """The levels of one server: what the clients received agrees with itself and with the server's count."""
    assert [level["clients"] for level in one["levels"]] == [1, 2]
    for level in one["levels"]:
        clients = level["clients"]
        assert level["requests"] == level["ok"] == clients * 1
        assert level["rejected"] == 0 and level["errors"] == 0
        assert len(level["results"]) == clients
        assert sorted(r["client"] for r in level["results"]) == list(range(clients))
        for r in level["results"]:
            assert r["status"] == 200 and r["ok"] and r["error"] is None
            assert 1 <= r["frames"] <= 6
            assert r["bytes"] == r["frames"] * FRAME_BYTES
            assert r["audio_seconds"] == pytest.approx(r["frames"] * FRAME_SECONDS)
            assert 0 < r["time_to_first_audio_s"] <= r["total_seconds"]
        frames = sum(r["frames"] for r in level["results"])
        assert level["frames"] == frames
        assert level["audio_seconds"] == pytest.approx(frames * FRAME_SECONDS)
        assert level["audio_seconds_per_second"] == pytest.approx(level["audio_seconds"] / level["wall_seconds"])
        assert max(r["total_seconds"] for r in level["results"]) <= level["wall_seconds"]
        ttfa = level["time_to_first_audio_s"]
        assert 0 < ttfa["p50"] <= ttfa["p95"] <= ttfa["max"]
        gaps = level["chunk_gap_s"]
        assert gaps["count"] == frames - clients  # one gap between each two frames of a response
        if gaps["count"]:
            assert 0 <= gaps["p50"] <= gaps["p95"] <= gaps["max"]
        assert 0 < level["server_peak_rss_bytes"] <= one["server_peak_rss_bytes"]
        # the server's own count agrees with what the clients received
        assert level["server"] == {"frames_generated": frames, "jobs_done": clients, "rejected_429": 0}


@pytest.mark.parametrize("args, message", [
    (["--clients", "1,x"], "--clients"),
    (["--clients", "0"], "--clients"),
    (["--requests-per-client", "0"], "--requests-per-client"),
    (["--text", "   "], "--text"),
    (["--url", "ftp://example"], "--url"),
    (["--url", "http://127.0.0.1:8000/v1"], "--url"),
    (["--url", "http://127.0.0.1:9", "--preset", "tiny"], "--preset"),
    (["--max-rows", "1,0"], "--max-rows: 0 is out of range"),
    (["--max-rows", "4,4"], "--max-rows: 4 is given twice"),
    (["--url", "http://127.0.0.1:9", "--max-rows", "1,4"], "--max-rows sets up the servers"),
])
def test_bench_serve_refuses_bad_input_before_starting_a_server(tmp_path, args, message):
    result = _run(*args, "--out", str(tmp_path / "results"), cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and message in result.stderr
    assert "starting the server" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_bench_serve_reports_a_url_that_does_not_answer(tmp_path):
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _run("--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "results"), cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "does not answer" in result.stderr
    assert not (tmp_path / "results").exists()


def test_bench_serve_loads_a_running_server_given_by_url(server, tmp_path):
    """``--url`` of the tests' shared server (API key, 16 frames at most); a wrong key is an error, not ok."""
    out = tmp_path / "results"
    result = _run("--url", server.url, "--api-key", server.api_key, "--server-pid", str(server.process.pid),
                  "--clients", "1", "--requests-per-client", "1", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "bench-serve.json").read_text())
    assert document["run"]["started_server"] is False and document["run"]["url"] == server.url
    [one] = document["runs"]
    assert one["max_rows"] is None and one["server_pid"] == server.process.pid
    [level] = one["levels"]
    [request] = level["results"]
    assert level["ok"] == 1 and request["status"] == 200
    assert 1 <= request["frames"] <= server.max_frames
    assert level["server"]["frames_generated"] == request["frames"] and level["server"]["jobs_done"] == 1
    assert level["server_peak_rss_bytes"] > 0

    result = _run("--url", server.url, "--api-key", "wrong", "--clients", "1", "--requests-per-client", "1",
                  "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 request(s) failed" in result.stderr
    [level] = json.loads((out / "bench-serve.json").read_text())["runs"][0]["levels"]
    assert level["ok"] == 0 and level["errors"] == 1 and level["rejected"] == 0
    assert level["results"][0]["status"] == 401 and level["results"][0]["error"].startswith("HTTP 401")
    assert level["server_peak_rss_bytes"] is None and level["audio_seconds"] == 0
