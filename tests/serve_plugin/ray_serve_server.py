"""Running a real ``csmctl serve --ray`` for the Ray tests: a subprocess (``--preset tiny``, loopback)
that starts a local Ray on this machine's CPUs and deploys the app; and a helper process attached to
that Ray which kills replica actors on request (``ray.kill``), so the test process itself never
becomes a Ray driver."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from serve_server import API_KEY, Server, free_port, launch, server_environment

READY_TIMEOUT_S = 300.0
READY_LINE = "csmctl serve --ray: ready after"


def start_ray_server(folder: Path, max_frames: int, replicas: int | None = 2, config: Path | None = None,
                     api_key: str | None = API_KEY, ray_options: dict | None = None, **options) -> Server:
    """``python -m csm_core.cli serve --ray`` on a free loopback port; waits until the deployment is
    ready (every replica loaded) and ``/ready`` answers 200. ``options``: ``[options.serve]``,
    ``ray_options``: ``[options.ray]`` (through the environment)."""
    port = free_port()
    env = server_environment(folder, api_key, options, drop=("CSM_", "RAY_"))
    for name, value in (ray_options or {}).items():
        env[f"CSM_OPTIONS__RAY__{name.upper()}"] = str(value)
    command = [sys.executable, "-m", "csm_core.cli", "serve", "--ray", "--preset", "tiny", "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port), "-m", str(max_frames), "--verbose"]
    if replicas is not None:
        command += ["--replicas", str(replicas)]
    if config is not None:
        command += ["--config", str(config)]
    return launch(folder, command, env, port, api_key, max_frames, ready_line=READY_LINE, timeout_s=READY_TIMEOUT_S)


def gcs_address(server: Server) -> str:
    match = re.search(r"csmctl serve --ray: a local Ray \(GCS ([^)\s]+)\)", server.log_text())
    assert match, server.log_text()[-3000:]
    return match.group(1)


KILLER = r"""
import sys
import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print("attached", flush=True)
for line in sys.stdin:
    name = line.strip()
    if not name:
        continue
    try:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        print("killed", name, flush=True)
    except Exception as exc:
        print("failed", name, type(exc).__name__, exc, flush=True)
"""


class ReplicaKiller:
    """A process attached to the server's Ray (as a second driver) that kills replica actors by the
    name in their ``X-CSM-Replica`` header: ``ray.kill(actor, no_restart=True)``, as a crash would."""

    def __init__(self, server: Server, app: str = "csm"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_AUTH_MODE"] = "token"  # the local Ray made a token (~/.ray/auth_token) and requires it
        self.app = app
        self.process = subprocess.Popen([sys.executable, "-c", KILLER, gcs_address(server)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        line = self.process.stdout.readline()
        assert line.strip() == "attached", f"the killer could not attach to Ray: {line!r}"

    def kill(self, replica: str) -> str:
        """Kill the replica named ``replica`` (``CsmServe#<id>``); returns the killer's answer."""
        self.process.stdin.write(f"SERVE_REPLICA::{self.app}#{replica}\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
