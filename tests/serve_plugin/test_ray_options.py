"""The Ray Serve path without a Ray: ``[options.ray]`` and the deployment options made from it, the
replica and proxy middleware, the handle-backed stages, and that nothing but ``csm_serve.ray_app``
imports Ray."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from csm_core.config import Settings, load_settings
from csm_core.errors import ConfigError
from csm_serve.options import ServeOptions
from csm_serve.ray_headers import ProxyErrors, ReplicaHeaders
from csm_serve.ray_options import (
    RayOptions, deployment_options, front_settings, ray_options, stage_replica_options,
)
from csm_serve.scheduler import Job


def settings_with(ray: dict | None = None, **fields) -> Settings:
    return Settings.model_validate({**fields, "options": {"ray": ray or {}}})


def test_defaults_match_the_single_server_queue():
    serve = ServeOptions(max_queue=3, retry_after_s=4, shutdown_grace_s=7)
    settings = settings_with(device="cpu")
    ray = ray_options(settings)
    options = deployment_options(ray, ray, serve, settings, "CsmServe")
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 3  # = max_queue: a replica's queue never overflows
    assert options["max_queued_requests"] == 1 * 3 + 3  # the replicas' capacity + max_queue
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 4.0}
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert options["graceful_shutdown_timeout_s"] == 7


def test_gpus_autoscaling_and_resources_come_from_the_config():
    settings = settings_with({"num_cpus": 4, "memory_gb": 8, "max_replicas_per_node": 1,
                              "autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3},
                              "runtime_env": {"env_vars": {"HF_HOME": "/models"}}}, device="cuda")
    ray = ray_options(settings)
    options = deployment_options(ray, ray, ServeOptions(max_queue=2), settings, "CsmServe")
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3.0,
                                             "upscale_delay_s": 10.0, "downscale_delay_s": 300.0}
    assert options["ray_actor_options"] == {"num_cpus": 4.0, "num_gpus": 1.0, "memory": 8 * 1024 ** 3,
                                            "runtime_env": {"env_vars": {"HF_HOME": "/models"}}}
    assert options["max_queued_requests"] == 4 * 2 + 2 and options["max_replicas_per_node"] == 1
    fixed = ray_options(settings, replicas=3)  # --replicas: a fixed count, whatever the config says
    assert fixed.autoscaling is None and deployment_options(fixed, fixed, ServeOptions(), settings, "x")["num_replicas"] == 3


@pytest.mark.parametrize("table, message", [
    ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "above max_replicas"),
    ({"stages": {"tokenizer": {}}}, "unknown stage 'tokenizer'"),
    ({"layout": "everything"}, "layout"),
    ({"replicas": 0}, "replicas"),
    ({"num_gpu": 1}, "num_gpu"),
])
def test_bad_ray_options_name_the_field(table, message):
    with pytest.raises(ConfigError, match=r"\[options\.ray\]") as error:
        ray_options(settings_with(table))
    assert message in str(error.value)


def test_the_stages_layout_makes_remote_stages_and_a_cpu_front(tmp_path):
    config = tmp_path / "csm.toml"
    config.write_text('device = "cuda"\n[options.ray]\nlayout = "stages"\nremote_stages = ["llm", "tts"]\n'
                      '[options.ray.stages.tts]\nreplicas = 2\nnum_gpus = 0.5\n')
    settings = load_settings(config, environ={})
    ray = ray_options(settings)
    assert ray.deployed_stages() == ["llm", "tts"]
    front = front_settings(settings, ray)
    assert (front.stages.llm, front.stages.tts, front.stages.transcriber) == ("ray-remote", "ray-remote", "whisper")
    assert front.device == "cpu"  # the tts stage is remote and the front replica reserves no GPU
    tts = stage_replica_options(ray, "tts")
    assert deployment_options(tts, ray, ServeOptions(), settings, "CsmStage-tts")["ray_actor_options"]["num_gpus"] == 0.5
    assert stage_replica_options(ray, "llm").replicas == 1
    assert front_settings(settings, RayOptions()) is settings  # layout = "pipeline": unchanged


# -- middleware ---------------------------------------------------------------------------------------
def run_asgi(app, scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_the_replica_header_and_one_request_id():
    jobs: list[Job] = []

    async def app(scope, receive, send):
        jobs.append(Job("speech", lambda pipeline, control: None))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-request-id", jobs[-1].id.encode()), (b"x-voice", b"alloy")]})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = ReplicaHeaders(app, replica="CsmServe#abc123")
    sent = run_asgi(wrapped, {"type": "http", "headers": [(b"x-request-id", b"0f1e-2d3c")]})
    assert jobs[-1].id == "0f1e-2d3c"  # the job takes the proxy's id (which the proxy adds to the answer)
    assert sent[0]["headers"] == [(b"x-voice", b"alloy"), (b"x-csm-replica", b"CsmServe#abc123")]
    sent = run_asgi(wrapped, {"type": "http", "headers": [(b"x-request-id", b"not a token\n")]})
    assert jobs[-1].id.startswith("req_")  # an odd id is not used: the job keeps its own, and its header
    assert (b"x-request-id", jobs[-1].id.encode()) in sent[0]["headers"]
    assert Job("speech", lambda p, c: None).id.startswith("req_")  # outside a request: its own ids


def test_the_replica_header_on_a_websocket_handshake():
    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})

    sent = run_asgi(ReplicaHeaders(app, replica="CsmServe#abc123"), {"type": "websocket", "headers": []})
    assert sent == [{"type": "websocket.accept", "headers": [(b"x-csm-replica", b"CsmServe#abc123")]}]


def test_a_request_whose_replica_died_gets_a_clear_503():
    async def died(scope, receive, send):  # Ray's proxy after the replica's actor died: no answer at all
        return None

    sent = run_asgi(ProxyErrors(died), {"type": "http", "headers": []})
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "replica_unavailable" and "retry" in error["message"]

    async def answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": {}}'})

    sent = run_asgi(ProxyErrors(answered), {"type": "http"})  # the app's own answers pass as they are
    assert [m.get("status") for m in sent] == [429, None] and sent[1]["body"] == b'{"error": {}}'


def test_rays_plain_text_backpressure_becomes_an_openai_error():
    async def refused(scope, receive, send):  # what Ray's proxy sends when max_queued_requests are waiting
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"37"),
                                (b"retry-after", b"2")]})
        await send({"type": "http.response.body", "body": b"Request dropped due to backpressure (.", "more_body": True})
        await send({"type": "http.response.body", "body": b"..)"})

    sent = run_asgi(ProxyErrors(refused), {"type": "http"})
    assert sent[0]["status"] == 429 and (b"retry-after", b"2") in sent[0]["headers"]
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    error = json.loads(sent[1]["body"])["error"]
    assert error == {"message": "Request dropped due to backpressure (...)", "type": "rate_limit_error",
                     "param": None, "code": "queue_full"}


# -- the handle-backed stages --------------------------------------------------------------------------
class FakeResponse:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class FakeStream:
    def __init__(self, chunks):
        self.chunks, self.cancelled = chunks, False

    def __iter__(self):
        return iter(self.chunks)

    def cancel(self):
        self.cancelled = True


class FakeMethod:
    def __init__(self, function):
        self.function = function

    def remote(self, *args):
        return self.function(*args)


class FakeHandle:
    """What a deployment handle offers the remote stages: ``handle.method.remote(...).result()`` and
    ``handle.options(stream=True).speak.remote(...)``."""

    def __init__(self, chunks=()):
        self.streams: list[FakeStream] = []
        self.transcribe = FakeMethod(lambda audio: FakeResponse(f"heard {audio.duration_s:.1f} s"))
        self.info = FakeMethod(lambda: FakeResponse({"sample_rate": 24_000, "max_positions": 2048, "device": "cpu"}))
        self.count_text_tokens = FakeMethod(lambda text: FakeResponse(len(text.split())))
        self._chunks = list(chunks)

    def options(self, stream=False):
        assert stream
        handle = self

        class Streaming:
            def __init__(self):
                self.speak = FakeMethod(lambda request: handle._stream())

        return Streaming()

    def _stream(self):
        self.streams.append(FakeStream(self._chunks))
        return self.streams[-1]


def test_a_pipeline_uses_the_handles_for_its_remote_stages():
    from csm_core.audio import Audio
    from csm_core.pipeline import Pipeline
    from csm_serve.ray_stages import front_plugins

    handle = FakeHandle(chunks=["frame 1", "frame 2", "frame 3"])
    settings = front_settings(Settings(device="cpu"), RayOptions(layout="stages", remote_stages=["transcriber", "tts"]))
    with Pipeline(settings, plugins=front_plugins({"transcriber": handle, "tts": handle})) as pipeline:
        pipeline.require("transcriber", "tts")  # a remote stage needs no local backend
        transcriber = pipeline.stage("transcriber")
        assert transcriber.transcribe(Audio(np.zeros(24_000, np.float32), 24_000)) == "heard 1.0 s"
        speaker = pipeline.stage("tts")
        assert (speaker.sample_rate, speaker.max_positions, speaker.count_text_tokens("two words")) == (24_000, 2048, 2)
        chunks = speaker.speak(object())
        assert next(chunks) == "frame 1"
        chunks.close()  # a cancelled request closes the stream: the remote generator is cancelled
        assert handle.streams[-1].cancelled
        assert list(speaker.speak(object())) == ["frame 1", "frame 2", "frame 3"]


def test_nothing_but_ray_app_imports_ray():
    code = ("import sys\n"
            "import csm_core.cli, csm_serve.plugin, csm_serve.app, csm_serve.server, csm_serve.ray_options, "
            "csm_serve.ray_stages, csm_serve.ray_headers, csm_serve.loadbench\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_replicas_without_ray_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "csm_core.cli", "serve", "--replicas", "2", "--preset", "tiny"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "--replicas is for --ray" in result.stderr


def test_bench_serve_starts_the_ray_server_or_refuses_ray_flags(tmp_path):
    from csm_core.errors import CsmError
    from csm_serve.loadbench import run_bench_serve, server_command, tree_status_bytes

    command = server_command(8123, {"preset": "tiny"}, ray=True, replicas=2)
    assert command[3:] == ["serve", "--host", "127.0.0.1", "--port", "8123", "--ray", "--replicas", "2",
                           "--preset", "tiny"]
    with pytest.raises(CsmError, match="--ray and --replicas set up the server"):
        run_bench_serve(clients="1", requests_per_client=1, text=None, out=tmp_path / "out",
                        url="http://127.0.0.1:9", ray=True)
    with pytest.raises(CsmError, match="--replicas is for --ray"):
        run_bench_serve(clients="1", requests_per_client=1, text=None, out=tmp_path / "out", replicas=2)
    import os

    assert tree_status_bytes(os.getpid(), "VmRSS") > 0  # this process and what it started
