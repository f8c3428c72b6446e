"""``csmctl bench serve``: load-test the speech server with concurrent streaming clients.

It starts a real server the way ``csmctl serve`` runs (``python -m csm_core.cli serve`` on a free
loopback port, with the model options given here and a fresh random API key), or uses ``--url`` of a
running one. For each concurrency level it runs that many client threads at once, each sending
``--requests-per-client`` requests one after another (``POST /v1/audio/speech``, ``pcm``, stream_format
``audio``), and measures per request the time to the first audio byte, the gaps between 80 ms frames
arriving and the seconds of audio received; between levels it reads the server's ``/metrics`` (frames
generated, jobs done, 429s) and samples the server's RSS (``/proc/<pid>/status``) during each level.

With ``--ray [--replicas N]`` the server it starts is ``csmctl serve --ray`` (Ray Serve, a local Ray on
this machine): it waits until every replica is loaded, samples the RSS of the whole process tree (the
CLI, Ray's GCS, raylet, proxy and controller, and the replicas), and leaves the server's ``/metrics``
out (each answer comes from one replica, so differences between levels would mix replicas).

The clients use only the standard library (``http.client``), so the command needs nothing beyond the
``serve`` extra (and the ``ray`` extra for ``--ray``). Bad input exits with status 2 before a server starts; a server that fails to become
ready exits 1 with the tail of its log; Ctrl-C exits 130 and writes nothing. The three reports
(``bench-serve.json``, ``.md``, ``.png``, see :mod:`csm_serve.loadbench_report`) are written together
at the end, each through a temporary file and a rename.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from csm_core.errors import CsmError

DEFAULT_TEXT = "The benchmark sentence is spoken the same way on every backend."
FRAME_SECONDS = 0.08
SAMPLE_RATE = 24_000
BYTES_PER_SAMPLE = 2
READY_TIMEOUT_S = 600.0
RSS_INTERVAL_S = 0.05


class ServerFailed(CsmError):
    """The started server exited or did not become ready (exit status 1)."""


# -- input ---------------------------------------------------------------------------------------
def parse_numbers(value: str, option: str, low: int, high: int, unit: str, example: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]: whole numbers ``low..high``, no repeats, in the order given; errors name
    ``option`` (``unit`` and ``example`` complete their messages)."""
    numbers: list[int] = []
    for part in (part.strip() for part in value.split(",")):
        if not part:
            continue
        try:
            number = int(part)
        except ValueError:
            raise CsmError(f"{option}: {part!r} is not a whole number (give e.g. {example})") from None
        if not low <= number <= high:
            raise CsmError(f"{option}: {number} is out of range ({low} to {high} {unit})")
        if number in numbers:
            raise CsmError(f"{option}: {number} is given twice")
        numbers.append(number)
    if not numbers:
        raise CsmError(f"{option} is empty: give e.g. {example}")
    return numbers


def parse_clients(value: str) -> list[int]:
    """``"1,2,4,8"`` -> [1, 2, 4, 8]: the concurrency levels (1 to 256 clients)."""
    return parse_numbers(value, "--clients", 1, 256, "clients", "1,2,4,8")


def parse_max_rows(value: str | None) -> list[int | None]:
    """``--max-rows "1,4"`` -> [1, 4]: one started server per value, side by side in one run (None: one
    server with its configured ``[options.serve] max_rows``)."""
    if value is None:
        return [None]
    return parse_numbers(value, "--max-rows", 1, 64, "rows",
                         "1,4: 1 is one request at a time, more is continuous batching")


def check_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise CsmError(f"--url {url!r}: the port is not a number") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise CsmError(f"--url {url!r}: give the server's base URL, e.g. http://127.0.0.1:8000 (http only, no path)")
    return url.rstrip("/")


# -- the server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class StartedServer:
    url: str
    process: subprocess.Popen
    log: Path
    api_key: str
    command: list[str]
    ready_seconds: float = 0.0

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(30)
        return self.process.returncode


RAY_READY_LINE = "csmctl serve --ray: ready after"


def server_command(port: int, flags: dict, ray: bool = False, replicas: int | None = None) -> list[str]:
    """``python -m csm_core.cli serve`` on ``127.0.0.1:port`` with the say-options in ``flags`` (with
    ``ray``: ``serve --ray [--replicas N]``)."""
    command = [sys.executable, "-m", "csm_core.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if ray:
        command.append("--ray")
        if replicas is not None:
            command += ["--replicas", str(replicas)]
    names = {"model_path": "--model-path", "model_flavor": "--model-flavor", "preset": "--preset",
             "max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k",
             "top_p": "--top-p", "speaker": "--speaker", "seed": "--seed", "device": "--device",
             "backend": "--backend", "config": "--config"}
    for key, flag in names.items():
        if flags.get(key) is not None:
            command += [flag, str(flags[key])]
    for name in flags.get("optimizer") or []:
        command += ["--optimizer", name]
    return command


def start_server(flags: dict, threads: int | None, folder: Path, should_stop=lambda: False, ray: bool = False,
                 replicas: int | None = None, max_rows: int | None = None) -> StartedServer:
    """Start the server in a subprocess and wait (at most READY_TIMEOUT_S) until ``/ready`` says 200
    (with ``ray``: and the CLI said every replica is ready). ``threads``, ``max_rows``: its
    ``[options.serve]`` ``threads`` and ``max_rows`` (None: as configured)."""
    port = free_port()
    api_key = secrets.token_hex(16)
    env = dict(os.environ, CSM_SERVE_API_KEY=api_key, PYTHONUNBUFFERED="1")
    if threads is not None:
        env["CSM_OPTIONS__SERVE__THREADS"] = str(threads)
    if max_rows is not None:
        env["CSM_OPTIONS__SERVE__MAX_ROWS"] = str(max_rows)
    command = server_command(port, flags, ray, replicas)
    log = folder / f"server-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    server = StartedServer(f"http://127.0.0.1:{port}", process, log, api_key, command)
    started = time.perf_counter()
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerFailed(f"the server exited with status {process.returncode} before it was ready; "
                                   f"its log ends:\n{server.log_tail()}")
            try:
                if (not ray or RAY_READY_LINE in server.log_tail(1 << 20)) and _get(server.url, "/ready", timeout=5)[0] == 200:
                    server.ready_seconds = time.perf_counter() - started
                    return server
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.25)
        raise ServerFailed(f"the server was not ready within {READY_TIMEOUT_S:.0f} s; its log ends:\n"
                           f"{server.log_tail()}")
    except BaseException:
        server.stop()
        raise


# -- metrics of the server ------------------------------------------------------------------------
def read_metrics(url: str) -> dict | None:
    """The series of ``/metrics`` bench-serve compares between levels, or None when it cannot be read."""
    try:
        status, body = _get(url, "/metrics", timeout=10)
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    wanted = {
        'csm_serve_frames_generated_total{kind="speech"}': "frames_generated",
        'csm_serve_jobs_total{kind="speech",outcome="done"}': "jobs_done",
        'csm_serve_requests_total{endpoint="/v1/audio/speech",status="429"}': "rejected_429",
    }
    values = dict.fromkeys(wanted.values(), 0.0)
    for line in body.decode("utf-8", "replace").splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            try:
                values[wanted[name]] = float(value)
            except ValueError:
                pass
    return values


def metrics_delta(url: str, before: dict | None, expected_done: int, wait_s: float = 3.0) -> dict | None:
    """The change of the metrics since ``before``; waits (bounded) until the jobs the clients saw end are
    counted (the worker counts a job before its last event; the wait covers a server of another version)."""
    if before is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        after = read_metrics(url)
        if after is None:
            return None
        delta = {key: int(round(after[key] - before[key])) for key in before}
        if delta["jobs_done"] >= expected_done or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


class RssSampler:
    """Samples ``VmRSS`` of process ``pid`` (with ``tree``: the sum over it and its descendants) every
    RSS_INTERVAL_S in a thread; ``peak`` is the highest."""

    def __init__(self, pid: int | None, tree: bool = False):
        self.pid, self.peak, self.tree = pid, None, tree
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-serve-rss", daemon=True)

    def sample(self) -> None:
        value = (tree_status_bytes if self.tree else proc_status_bytes)(self.pid, "VmRSS")
        if value is not None:
            self.peak = max(self.peak or 0, value)

    def _loop(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            self.sample()

    def __enter__(self) -> "RssSampler":
        if self.pid is not None:
            self.sample()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.pid is not None:
            self.sample()


def proc_status_bytes(pid: int | None, field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM) in bytes, or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, their children, ...), from ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            parent = int(text[text.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
            children.setdefault(parent, []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def tree_status_bytes(pid: int | None, field_name: str) -> int | None:
    """The sum of a ``kB`` field of ``/proc/<p>/status`` over ``pid`` and its descendants, or None."""
    if pid is None:
        return None
    values = [proc_status_bytes(p, field_name) for p in descendants(pid)]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


# -- the clients -------------------------------------------------------------------------------------
@dataclass
class RequestResult:
    client: int
    index: int
    status: int | None = None
    error: str | None = None
    time_to_first_audio_s: float | None = None
    total_seconds: float = 0.0
    bytes: int = 0
    gaps: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def rejected(self) -> bool:
        return self.status == 429

    @property
    def frames(self) -> int:
        return self.bytes // (BYTES_PER_SAMPLE * int(SAMPLE_RATE * FRAME_SECONDS))

    @property
    def audio_seconds(self) -> float:
        return self.bytes / BYTES_PER_SAMPLE / SAMPLE_RATE

    def to_dict(self) -> dict:
        return {"client": self.client, "index": self.index, "status": self.status, "ok": self.ok,
                "rejected": self.rejected, "error": self.error, "time_to_first_audio_s": self.time_to_first_audio_s,
                "total_seconds": self.total_seconds, "bytes": self.bytes, "frames": self.frames,
                "audio_seconds": self.audio_seconds, "chunk_gap_p95_s": percentile(self.gaps, 95),
                "chunk_gap_max_s": max(self.gaps) if self.gaps else None}


def speak_once(url: str, headers: dict, body: bytes, client: int, index: int, timeout: float) -> RequestResult:
    """One streaming request; never raises (a failure is the result's ``error``)."""
    result = RequestResult(client, index)
    frame_bytes = BYTES_PER_SAMPLE * int(SAMPLE_RATE * FRAME_SECONDS)
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request("POST", "/v1/audio/speech", body=body, headers=headers)
        response = connection.getresponse()
        result.status = response.status
        if response.status != 200:
            text = response.read(4096).decode("utf-8", "replace")
            try:
                message = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = text[:200]
            result.error = f"HTTP {response.status}: {message}"
            return result
        last_frame_at = None
        while True:
            data = response.read1(65536)
            if not data:
                break
            now = time.perf_counter()
            if result.time_to_first_audio_s is None:
                result.time_to_first_audio_s = now - started
            frames_before = result.bytes // frame_bytes
            result.bytes += len(data)
            if result.bytes // frame_bytes > frames_before:  # at least one more whole frame arrived
                if last_frame_at is not None:
                    result.gaps.append(now - last_frame_at)
                last_frame_at = now
        if result.bytes % frame_bytes:
            result.error = f"the stream ended inside a frame ({result.bytes} bytes)"
    except (OSError, http.client.HTTPException) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.total_seconds = time.perf_counter() - started
        connection.close()
    return result


def run_level(url: str, headers: dict, body: bytes, clients: int, requests_per_client: int, timeout: float,
              server_pid: int | None, on_request=lambda result: None, rss_tree: bool = False,
              server_metrics: bool = True) -> dict:
    """``clients`` threads, started together, each sending ``requests_per_client`` requests in turn
    (``rss_tree``: sample the server's whole process tree; ``server_metrics``: read its /metrics)."""
    results: list[RequestResult] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            return
        for index in range(requests_per_client):
            result = speak_once(url, headers, body, number, index, timeout)
            with lock:
                results.append(result)
            on_request(result)

    threads = [threading.Thread(target=client, args=(n,), name=f"bench-serve-client-{n}", daemon=True)
               for n in range(clients)]
    for thread in threads:
        thread.start()
    before = read_metrics(url) if server_metrics else None
    with RssSampler(server_pid, tree=rss_tree) as rss:
        barrier.wait(timeout=60)
        started = time.perf_counter()
        for thread in threads:
            while thread.is_alive():  # join in slices: Ctrl-C still interrupts the main thread
                thread.join(0.2)
        wall = time.perf_counter() - started
    results.sort(key=lambda r: (r.client, r.index))
    return summarize(clients, results, wall, rss.peak,
                     metrics_delta(url, before, sum(r.ok for r in results)))


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, linear between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(clients: int, results: list[RequestResult], wall: float, peak_rss: int | None,
              server: dict | None) -> dict:
    ok = [r for r in results if r.ok]
    ttfa = [r.time_to_first_audio_s for r in ok if r.time_to_first_audio_s is not None]
    gaps = [gap for r in ok for gap in r.gaps]
    audio = sum(r.audio_seconds for r in ok)
    return {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "rejected": sum(r.rejected for r in results),
        "errors": sum(not r.ok and not r.rejected for r in results),
        "wall_seconds": wall,
        "audio_seconds": audio,
        "audio_seconds_per_second": audio / wall if wall > 0 else None,
        "frames": sum(r.frames for r in ok),
        "time_to_first_audio_s": {"p50": percentile(ttfa, 50), "p95": percentile(ttfa, 95),
                                  "max": max(ttfa) if ttfa else None},
        "chunk_gap_s": {"p50": percentile(gaps, 50), "p95": percentile(gaps, 95), "max": max(gaps) if gaps else None,
                        "count": len(gaps)},
        "server_peak_rss_bytes": peak_rss,
        "server": server,
        "results": [r.to_dict() for r in results],
    }


# -- the command ------------------------------------------------------------------------------------
def run_bench_serve(*, clients: str, requests_per_client: int, text: str | None, out: str | Path,
                    url: str | None = None, api_key: str | None = None, server_pid: int | None = None,
                    threads: int | None = None, model: str = "tts-1", voice: str = "alloy",
                    timeout: float = 600.0, flags: dict | None = None, ray: bool = False,
                    replicas: int | None = None, max_rows: str | None = None) -> tuple[list[Path], dict]:
    """Run the benchmark with a progress bar; returns (the files written, the document). ``ray``,
    ``replicas``: start ``csmctl serve --ray [--replicas N]`` instead of the single server. ``max_rows``
    (``"1,4"``): start one server per setting, one after another, and report them side by side."""
    from csm_core.output_paths import check_output_folder
    from csm_core.user_text import check_text

    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != []}
    levels = parse_clients(clients)
    settings = parse_max_rows(max_rows)
    if requests_per_client < 1 or requests_per_client > 1000:
        raise CsmError(f"--requests-per-client {requests_per_client} is out of range (1 to 1000)")
    if not (timeout > 0):
        raise CsmError(f"--timeout {timeout} must be positive")
    text = DEFAULT_TEXT if text is None else check_text(text, "--text")
    out = check_output_folder(out, "--out")
    if url is not None:
        url = check_url(url)
        if flags:
            names = ", ".join("--" + k.replace("_", "-") for k in flags)
            raise CsmError(f"{names}: these set up the server `bench serve` starts; with --url the running server's "
                           "own settings apply (leave them out)")
        if threads is not None:
            raise CsmError("--threads sets up the server `bench serve` starts; leave it out with --url")
        if ray or replicas is not None:
            raise CsmError("--ray and --replicas set up the server `bench serve` starts; leave them out with --url")
        if max_rows is not None:
            raise CsmError("--max-rows sets up the servers `bench serve` starts; leave it out with --url")
        api_key = api_key if api_key is not None else os.environ.get("CSM_SERVE_API_KEY")
    elif server_pid is not None:
        raise CsmError("--server-pid is for --url: the server `bench serve` starts is sampled anyway")
    if threads is not None and threads < 1:
        raise CsmError(f"--threads {threads} must be at least 1")
    if replicas is not None and not ray:
        raise CsmError("--replicas is for --ray (the single server runs one pipeline)")
    if replicas is not None and not 1 <= replicas <= 64:
        raise CsmError(f"--replicas {replicas} is out of range (1 to 64)")
    if flags.get("config") is not None and not Path(flags["config"]).is_file():
        raise CsmError(f"--config {str(flags['config'])!r} is not a file")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    body = json.dumps({"model": model, "input": text, "voice": voice, "response_format": "pcm",
                       "stream_format": "audio"}).encode("utf-8")
    runs: list[dict] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with tempfile.TemporaryDirectory(prefix="csm-bench-serve-") as folder, \
            Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("requests", total=len(settings) * sum(levels) * requests_per_client)
        for rows in settings:
            label = "" if rows is None else f"max_rows {rows}: "
            runs.append(_run_server_levels(
                progress, task, label, url, api_key, server_pid, flags, threads, Path(folder), ray, replicas, rows,
                body, levels, requests_per_client, timeout))
    run = {
        "url": url,
        "started_server": url is None,
        "preset": flags.get("preset"),
        "max_new_tokens": flags.get("max_new_tokens"),
        "threads": threads,
        "ray": ray,
        "replicas": replicas if ray else None,  # None with ray: the count [options.ray] sets
        "rss_scope": "process tree" if ray else "process",
        "max_rows": None if max_rows is None else settings,
        "clients": levels,
        "requests_per_client": requests_per_client,
        "text": text,
        "model": model,
        "voice": voice,
        "response_format": "pcm",
        "stream_format": "audio",
        "frame_seconds": FRAME_SECONDS,
        "sample_rate": SAMPLE_RATE,
    }
    return write_reports(run, runs, out)


def _run_server_levels(progress, task, label: str, url: str | None, api_key: str | None, server_pid: int | None,
                       flags: dict, threads: int | None, folder: Path, ray: bool, replicas: int | None,
                       max_rows: int | None, body: bytes, levels: list[int], requests_per_client: int,
                       timeout: float) -> dict:
    """Every client level against one server (started here with ``max_rows`` unless ``url`` is given)."""
    server = None
    if url is None:
        progress.console.print(f"bench serve: {label}starting the server" + (" on Ray Serve" if ray else "")
                               + " and loading the models")
        server = start_server(flags, threads, folder, ray=ray, replicas=replicas, max_rows=max_rows)
        url, api_key, server_pid = server.url, server.api_key, server.process.pid
        progress.console.print(f"bench serve: {label}server ready at {url} after {server.ready_seconds:.1f} s")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        try:
            status = _get(url, "/ready", timeout=10)[0]
        except (OSError, http.client.HTTPException) as exc:
            raise ServerFailed(f"{url}: the server does not answer ({exc})") from None
        if status != 200:
            raise ServerFailed(f"{url}/ready answers {status}: the server is not ready")
        results: list[dict] = []
        for count in levels:
            progress.update(task, description=f"{label}{count} client(s)")
            level = run_level(url, headers, body, count, requests_per_client, timeout, server_pid,
                              on_request=lambda result: progress.advance(task), rss_tree=ray,
                              server_metrics=not ray)
            results.append(level)
            progress.console.print(
                f"{label}{count} client(s): {level['ok']} ok, {level['rejected']} rejected, {level['errors']} "
                f"failed; {level['audio_seconds_per_second'] or 0:.2f} audio s/s, first audio p95 "
                f"{(level['time_to_first_audio_s']['p95'] or 0) * 1e3:.0f} ms")
        peak = (tree_status_bytes if ray else proc_status_bytes)(server_pid, "VmHWM")
    finally:
        if server is not None:
            server.stop()
    return {
        "max_rows": max_rows,
        "server_command": None if server is None else server.command[1:],
        "server_pid": server_pid,
        "ready_seconds": None if server is None else server.ready_seconds,
        "server_peak_rss_bytes": peak,
        "levels": results,
    }


def write_reports(run: dict, runs: list[dict], out: Path) -> tuple[list[Path], dict]:
    from csm_bench import machine_info, write_json
    from csm_core.files import replace_together
    from csm_serve.loadbench_report import build_document, markdown, plot

    document = build_document(runs, run, machine_info())
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench-serve.json", out / "bench-serve.md", out / "bench-serve.png"]
    with replace_together(*paths) as temporaries:
        write_json(document, temporaries[0])
        temporaries[1].write_bytes((markdown(document) + "\n").encode("utf-8"))
        plot(document, temporaries[2])
    return paths, document
