"""Running a real ``csmctl serve`` for the tests: a subprocess (``--preset tiny``, loopback only) on a
free port, its log in a file, and helpers to read its metrics."""

from __future__ import annotations

import re
import json
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

API_KEY = "test-key-0123456789"
FRAME_SAMPLES = 1920  # 80 ms at 24 kHz
SERVER_FRAMES = 16
READY_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running server: its base URL, process, log file and key."""

    url: str
    process: subprocess.Popen
    log: Path
    api_key: str | None
    max_frames: int

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str, **labels) -> float:
        """The value of one series of /metrics (0 when it is not there yet)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(30)
        return self.process.returncode


def server_environment(folder: Path, api_key: str | None, options: dict, drop: tuple[str, ...] = ("CSM_",)) -> dict:
    """The server process's environment: this one without variables starting with ``drop``, the cache and
    voices in ``folder``, one thread, the API key, and ``options`` as ``[options.serve]``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update({
        "CSM_CACHE_DIR": str(folder / "cache"),
        "CSM_OPTIONS__SERVE__THREADS": "1",
        "CSM_OPTIONS__SERVE__VOICES_DIR": str(folder / "voices"),
        "PYTHONUNBUFFERED": "1",
    })
    if api_key:
        env["CSM_SERVE_API_KEY"] = api_key
    for name, value in options.items():
        env[f"CSM_OPTIONS__SERVE__{name.upper()}"] = str(value)
    return env


def start_server(folder: Path, max_frames: int, api_key: str | None = API_KEY, **options) -> Server:
    """Start ``python -m csm_core.cli serve --preset tiny`` on a free loopback port and wait for /ready."""
    port = free_port()
    env = server_environment(folder, api_key, options)
    command = [sys.executable, "-m", "csm_core.cli", "serve", "--preset", "tiny", "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port), "-m", str(max_frames), "--verbose"]
    return launch(folder, command, env, port, api_key, max_frames)


def launch(folder: Path, command: list[str], env: dict, port: int, api_key: str | None, max_frames: int,
           ready_line: str | None = None, timeout_s: float = READY_TIMEOUT_S) -> Server:
    """Run ``command`` (a server on ``port``) with its output in ``folder/server.log``; wait until its log
    holds ``ready_line`` (when given) and ``/ready`` answers 200. Fails the test, with the log's end,
    when it exits first or is not ready within ``timeout_s``."""
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    server = Server(f"http://127.0.0.1:{port}", process, log, api_key, max_frames)
    name = "csmctl serve --ray" if "--ray" in command else "the server"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode} before it was ready:\n{server.log_text()[-4000:]}")
        if ready_line is None or ready_line in server.log_text():
            try:
                if httpx.get(f"{server.url}/ready", timeout=10).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
        time.sleep(0.25)
    server.stop()
    pytest.fail(f"{name} was not ready within {timeout_s} s:\n{server.log_text()[-4000:]}")


def wav_bytes(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """A real WAV clip: a voiced-like tone with some noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def wait_for_log(server: Server, pattern: str) -> re.Match:
    """The first log line matching ``pattern``; bounded wait (the server logs when a request ends; Ray
    forwards its replicas' lines to the CLI's output)."""
    for _ in range(600):
        match = re.search(pattern, server.log_text())
        if match:
            return match
        time.sleep(0.1)
    raise AssertionError(f"no log line matches {pattern!r}:\n{server.log_text()[-3000:]}")


def cancel_sentence_over_websocket(server: Server, frames: int, headers: dict | None = None):
    """Start a long sentence on ``/v1/audio/speech/stream``, cancel it after its first audio, close; returns
    (the handshake's response headers, the server's log line for the request: cancelled after how many
    frames). ``frames`` bounds the audio messages read before the cancellation's answer."""
    import websockets.sync.client

    url = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
    with websockets.sync.client.connect(url, additional_headers=headers or server.headers) as ws:
        handshake = ws.response.headers
        ws.send(json.dumps({"type": "text", "text": "This sentence would go on for a long while. "}))
        started = json.loads(ws.recv(timeout=120))
        assert started["type"] == "sentence.started"
        assert isinstance(ws.recv(timeout=120), bytes)
        ws.send(json.dumps({"type": "cancel"}))
        for _ in range(frames + 2):  # bounded: frames already sent, then the cancelled message
            message = ws.recv(timeout=120)
            if isinstance(message, str):
                break
        assert json.loads(message) == {"type": "cancelled", "index": 0}
        ws.send(json.dumps({"type": "close"}))
        assert json.loads(ws.recv(timeout=60)) == {"type": "done"}
    match = wait_for_log(server, rf"request {started['request_id']} \(websocket\) (\w+) after (\d+) of")
    return handshake, match
