"""The speech server on Ray Serve: ``csmctl serve --ray`` and ``serve run csm_serve.ray_app:app_builder``.

Importing this module imports Ray (the ``ray`` extra); nothing else in csm-multi imports it, and the
CLI imports it only for ``--ray``. See docs/scale-out.md.

- :class:`CsmServe` (the front deployment): each replica builds the same :class:`ServerState` as
  ``csmctl serve`` (one pipeline, its scheduler and worker thread, voices, conversations, metrics)
  and serves the same FastAPI app (:func:`csm_serve.app.create_app`) through ``@serve.ingress``, so
  every endpoint, the streaming and the WebSocket behave as in the single server. The app's start-up
  waits for the models: Ray routes to a replica only once its pipeline is loaded. Every response
  carries ``X-CSM-Replica``. ``check_health`` reports a failed load or a dead worker to Ray, which
  replaces the replica. At shutdown Ray drains the replica (requests in flight have
  ``graceful_shutdown_timeout_s``), then the app's lifespan closes the scheduler.
- With ``[options.ray] layout = "stages"`` the remote stages run in :class:`~csm_serve.ray_stages.StageServer`
  deployments (``CsmStage-<stage>``), whose handles the front replicas' pipelines call.
- :func:`build_app` makes the application from the settings and options; :func:`serve_on_ray` runs
  it for the CLI (a local Ray, or ``[options.ray] address``) until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import ray
from ray import serve

from csm_core.config import Settings
from csm_core.errors import ConfigError
from csm_serve.options import ServeOptions
from csm_serve.ray_headers import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from csm_serve.ray_options import (
    FRONT_DEPLOYMENT, STAGE_DEPLOYMENT, RayOptions, deployment_options, front_settings, replica_settings,
    stage_replica_options,
)
from csm_serve.ray_stages import StageServer

log = logging.getLogger("csm.serve.ray")

STAGES_ON_DEVICE = ("transcriber", "llm", "tts")
"""The stage deployments that get a GPU by default on cuda (the prosody sentiment analyzer runs on numpy)."""

STAGE_MAX_ONGOING = 2
"""Requests a stage replica takes at once (one runs, one waits so the next starts without a round trip);
the callers are the front replicas' worker threads, so the handles queue the rest."""


def _replica_logging(level: int) -> None:
    """Log the ``csm`` loggers to the replica's stderr (Ray forwards it to the driver, prefixed with
    the replica's name)."""
    logger = logging.getLogger("csm")
    logger.setLevel(level)
    if not any(getattr(h, "_csm_ray", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._csm_ray = True
        logger.addHandler(handler)


def replica_name() -> str:
    """``<deployment>#<replica id>`` of the replica this runs in (the ``X-CSM-Replica`` header)."""
    context = serve.get_replica_context()
    return f"{context.deployment}#{context.replica_tag}"


@serve.ingress()
class CsmServe:
    """A front replica: the whole server of ``csmctl serve`` around one pipeline (see the module docstring)."""

    def __init__(self, settings: Settings, options: ServeOptions, stage_handles: dict | None = None,
                 log_level: int = logging.WARNING):
        from csm_serve.server import build_state

        _replica_logging(log_level)
        self.replica = replica_name()
        plugins = None
        if stage_handles:
            from csm_serve.ray_stages import front_plugins

            plugins = front_plugins(stage_handles)
        self.state = build_state(settings, options, plugins=plugins)
        log.info("replica %s: loading the models", self.replica)

    def __serve_build_asgi_app__(self):
        from csm_serve.app import create_app

        return create_app(self.state, replica=self.replica, wait_for_models=True)

    def check_health(self) -> None:
        """Ray's periodic health check: fails when the models did not load or the worker thread died
        (Ray then replaces the replica). Slow requests do not fail it: it never touches the worker."""
        scheduler = self.state.scheduler
        if scheduler.load_error is not None:
            raise RuntimeError(f"loading the models failed: {scheduler.load_error}")
        worker = getattr(scheduler, "_thread", None)
        if scheduler.loaded.is_set() and worker is not None and not worker.is_alive():
            raise RuntimeError("the scheduler's worker thread has stopped")


class CsmStage(StageServer):
    """A stage replica (``layout = "stages"``)."""

    def __init__(self, stage: str, settings: Settings, log_level: int = logging.WARNING):
        _replica_logging(log_level)
        super().__init__(stage, settings)


FrontDeployment = serve.deployment(CsmServe, name=FRONT_DEPLOYMENT)
StageDeployment = serve.deployment(CsmStage, name="CsmStage")


def check_names(settings: Settings, options: ServeOptions, ray_options: RayOptions) -> None:
    """The stage, backend and optimizer names the replicas will load, checked here (UnknownNameError
    names the bad one). Only names: whether a backend can run is checked in each replica, on its node."""
    from csm_core.plugins import Plugins
    from csm_core.registry import Registry
    from csm_serve.server import startup_stages

    registry = Registry.collect(Plugins.from_environment())
    for stage in dict.fromkeys([*startup_stages(settings, options), *ray_options.deployed_stages()]):
        registry.stage(stage, getattr(settings.stages, stage))
        registry.backend(settings.backend_for(stage))
    for name in settings.optimizers:
        registry.optimizer(name)


def build_app(settings: Settings, options: ServeOptions, ray_options: RayOptions,
              log_level: int = logging.WARNING):
    """The Ray Serve application: the front deployment, and with ``layout = "stages"`` one deployment
    per remote stage bound to it. Checks the stage, backend and optimizer names first (a bad config
    raises :class:`~csm_core.errors.CsmError` here, before anything is deployed)."""
    check_names(settings, options, ray_options)
    settings = replica_settings(settings)
    front = front_settings(settings, ray_options)
    handles = {}
    for stage in ray_options.deployed_stages():
        replica = stage_replica_options(ray_options, stage)
        kwargs = deployment_options(replica, ray_options, options, settings, STAGE_DEPLOYMENT.format(stage=stage),
                                    holds_models=stage in STAGES_ON_DEVICE)
        kwargs["max_ongoing_requests"] = replica.max_ongoing_requests or STAGE_MAX_ONGOING
        kwargs["max_queued_requests"] = -1 if replica.max_queued_requests is None else replica.max_queued_requests
        kwargs.pop("backpressure_config")  # the callers are handles, not HTTP clients
        handles[stage] = StageDeployment.options(**kwargs).bind(stage, settings, log_level)
    holds_models = "tts" not in handles
    kwargs = deployment_options(ray_options, ray_options, options, front, FRONT_DEPLOYMENT, holds_models=holds_models)
    return FrontDeployment.options(**kwargs).bind(front, options, handles or None, log_level)


BUILDER_ARGS = ("config", "model_path", "model_flavor", "preset", "max_new_tokens", "temperature", "top_k", "top_p",
                "speaker", "seed", "device", "backend", "optimizer")


def app_builder(args: dict):
    """For ``serve run csm_serve.ray_app:app_builder config=csm.toml [preset=tiny device=cpu ...]`` and
    Serve config files (``import_path: csm_serve.ray_app:app_builder`` with ``args``): the settings
    from ``config`` (a TOML file), the ``CSM_*`` environment and the ``say`` flags given as args
    (:data:`BUILDER_ARGS`; another name is a ConfigError); the serve and ray options from the
    config's ``[options.serve]`` and ``[options.ray]``."""
    from pathlib import Path

    from csm_core.cli import _settings
    from csm_serve.options import serve_options, settings_environ
    from csm_serve.ray_options import ray_options

    args = dict(args or {})
    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if unknown:
        raise ConfigError(f"app_builder: unknown argument {unknown[0]!r}: choose from {', '.join(BUILDER_ARGS)}")
    config = args.pop("config", None)
    optimizers = args.pop("optimizer", None)
    if isinstance(optimizers, str):
        optimizers = [name for name in optimizers.split(",") if name]
    numbers = {"max_new_tokens": int, "top_k": int, "seed": int, "speaker": int, "temperature": float, "top_p": float}
    flags = {key: numbers[key](value) if key in numbers and value is not None else value for key, value in args.items()}
    settings = _settings(Path(config) if config else None, environ=settings_environ(), optimizer=optimizers, **flags)
    return build_app(settings, serve_options(settings), ray_options(settings))


# -- csmctl serve --ray ----------------------------------------------------------------------------
def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _deploy(application, ray_options: RayOptions, stop: threading.Event) -> BaseException | None:
    """``serve.run`` in a thread, so that SIGTERM/Ctrl-C while the replicas load stops waiting for it;
    returns why the deployment failed, or None (deployed, or stopped)."""
    outcome: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            serve.run(application, name=ray_options.app_name, route_prefix=ray_options.route_prefix,
                      blocking=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="csm-serve-ray-deploy", daemon=True).start()
    while not done.wait(0.5):
        if stop.is_set():
            return None
    return outcome.get("error")


def serve_on_ray(settings: Settings, options: ServeOptions, ray_options: RayOptions,
                 log_level: str = "warning") -> int:
    """Deploy the app on Ray Serve (a local Ray started here, or ``ray_options.address``), serve until
    SIGTERM (exit 0) or Ctrl-C (130), then delete the app (and stop the local Ray). Returns 1 when the
    deployment failed (a replica could not load its models)."""
    level = logging.INFO if log_level in ("info", "debug") else logging.WARNING
    application = build_app(settings, options, ray_options, log_level=level)
    local = ray_options.address is None
    init = {"namespace": "csm-multi", "log_to_driver": True, "logging_level": logging.WARNING}
    if local:
        init.update(include_dashboard=False, num_cpus=ray_options.num_cpus_local)
        # the proxy answers a request whose replica died before answering with a clear 503 (the
        # proxy is a process of the Ray started here, which inherits this environment)
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    else:
        init["address"] = ray_options.address
    stop = threading.Event()
    received: list[int] = []

    def note(sig, frame) -> None:
        received.append(sig)
        stop.set()

    previous: dict = {}
    try:
        ray.init(**init)
        # after ray.init, whose core worker installs a handler of its own that ends the process at once
        previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
        where = "a local Ray" if local else f"the Ray cluster at {ray_options.address}"
        _stderr(f"csmctl serve --ray: {where} (GCS {ray.get_runtime_context().gcs_address}), "
                f"application {ray_options.app_name!r}; deploying")
        serve.start(http_options={"host": options.host, "port": options.port})
        started = time.perf_counter()
        failure = _deploy(application, ray_options, stop)
        if stop.is_set() and failure is None:
            _stderr("csmctl serve --ray: stopped while deploying")
        elif failure is not None:  # the deployment failed: the replicas' errors are in the log above
            _stderr(f"csmctl serve --ray: the deployment failed: {failure}")
            return 1
        else:
            _stderr(f"csmctl serve --ray: ready after {time.perf_counter() - started:.1f} s at "
                    f"http://{options.host}:{options.port}{ray_options.route_prefix.rstrip('/')}")
        while not stop.wait(0.5):
            pass
        grace = (options.shutdown_grace_s if ray_options.graceful_shutdown_timeout_s is None
                 else ray_options.graceful_shutdown_timeout_s)
        _stderr(f"csmctl serve --ray: stopping; requests in flight have {grace:g} s to finish")
        try:
            serve.delete(ray_options.app_name)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            _stderr(f"csmctl serve --ray: deleting the application failed: {exc}")
    finally:
        if local and ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        elif ray.is_initialized():
            ray.shutdown()  # disconnect; the cluster stays
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 130 if signal.SIGINT in received else 0

