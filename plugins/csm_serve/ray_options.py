"""``[options.ray]``: how ``csmctl serve --ray`` runs the server on Ray Serve (see docs/scale-out.md).

Nothing here imports Ray: the options are read and checked, and turned into the keyword arguments of
``serve.deployment(...).options(...)``, before Ray is imported (so a bad config fails at once, and the
tests of these rules need no Ray).

One deployment (``layout = "pipeline"``, the default) runs replicas that each hold a whole pipeline
and serve the same FastAPI app as ``csmctl serve``. With ``layout = "stages"`` the transcriber,
sentiment, llm and tts stages (``remote_stages``) run in deployments of their own, each scaled on its
own (``[options.ray.stages.<stage>]``), and the front deployment reaches them through deployment
handles.

Replica settings (for the front deployment here, for a stage deployment in ``[options.ray.stages.<stage>]``):

- ``replicas`` (fixed count) or ``[...autoscaling]`` (``min_replicas``, ``max_replicas``,
  ``target_ongoing_requests``, delays): not both;
- ``num_cpus``, ``num_gpus`` (None: 1 when ``device`` is ``cuda``/``cuda:N``, else 0): what Ray
  reserves for each replica;
- ``max_ongoing_requests`` (None: ``[options.serve] max_queue``): requests (and WebSockets) one
  replica takes at once. Each has at most one job in the replica's scheduler, so its queue never
  holds more than ``max_queue`` and never answers 429 itself: Ray's backpressure answers first. (Not
  ``max_queue`` + 1 for the running job: between one job's end and the worker taking the next, Ray
  may already have admitted a new request, and the queue still holds the one waiting.)
  ``max_queued_requests``: what each Ray proxy holds back for the deployment
  before it answers 429 with ``Retry-After`` itself. Ray counts a request as queued until a replica
  has accepted it, so simultaneous arrivals count even while replicas have room: the default (None)
  is the replicas' capacity (``replicas`` or ``max_replicas`` times ``max_ongoing_requests``) plus
  ``max_queue``, so a burst the replicas can take is not refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from csm_core.config import Settings, plugin_options
from csm_core.errors import ConfigError
from csm_serve.options import ServeOptions

OPTIONS_NAME = "ray"
REMOTE_STAGES = ("transcriber", "sentiment", "llm", "tts")
"""The stages ``layout = "stages"`` may run in deployments of their own (the tokenizer stays in the
front replicas: it encodes voice clips and the user's audio there)."""

REMOTE_IMPLEMENTATION = "ray-remote"
"""The stage implementation name a front replica uses for a stage deployed apart (csm_serve.ray_stages)."""

FRONT_DEPLOYMENT = "CsmServe"
STAGE_DEPLOYMENT = "CsmStage-{stage}"


class Autoscaling(BaseModel):
    """``autoscaling``: Ray Serve's autoscaler, driven by the requests in flight per replica."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, le=1000, description="never fewer replicas (0: scale to zero when idle)")
    max_replicas: int = Field(2, ge=1, le=1000, description="never more replicas")
    initial_replicas: int | None = Field(None, ge=0, le=1000, description="replicas at deploy time (default min)")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="requests in flight per replica the autoscaler aims at (queued + running)")
    upscale_delay_s: float = Field(10.0, ge=0, description="load must stay high this long before adding a replica")
    downscale_delay_s: float = Field(300.0, ge=0, description="load must stay low this long before removing one")

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(f"initial_replicas ({self.initial_replicas}) is outside min_replicas..max_replicas")
        return self

    def config(self) -> dict:
        """Ray Serve's ``autoscaling_config``."""
        return self.model_dump(exclude_none=True)


class ReplicaOptions(BaseModel):
    """How many replicas of one deployment, what each reserves, how many requests each takes."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1, le=1000, description="a fixed number of replicas (without autoscaling)")
    autoscaling: Autoscaling | None = Field(None, description="scale on load instead of a fixed count")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica (default: 1 on cuda, else 0)")
    memory_gb: float | None = Field(None, gt=0, description="memory Ray reserves per replica (GiB)")
    max_ongoing_requests: int | None = Field(
        None, ge=1, le=100_000, description="requests one replica takes at once (default: [options.serve] max_queue)")
    max_queued_requests: int | None = Field(
        None, ge=-1, le=100_000, description="requests each proxy holds back for the deployment, then 429 "
        "(default: the replicas' capacity + [options.serve] max_queue; -1: no limit)")
    max_replicas_per_node: int | None = Field(None, ge=1, le=100, description="spread replicas over nodes")


class RayOptions(ReplicaOptions):
    """``[options.ray]``."""

    address: str | None = Field(
        None, description="a running Ray cluster (auto, or ray://head:10001); default: start a local Ray")
    num_cpus_local: int | None = Field(None, ge=1, description="CPUs of the local Ray started here (default: all)")
    app_name: str = Field("csm", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                          description="the Ray Serve application's name")
    route_prefix: str = Field("/", pattern=r"^/", description="where the app is mounted on the Ray proxy")
    layout: Literal["pipeline", "stages"] = Field(
        "pipeline", description="pipeline: each replica holds a whole pipeline; stages: one deployment per stage")
    remote_stages: list[Literal["transcriber", "sentiment", "llm", "tts"]] = Field(
        default_factory=lambda: list(REMOTE_STAGES), description="with layout = stages: the stages deployed apart")
    stages: dict[str, ReplicaOptions] = Field(
        default_factory=dict, description="replica settings of each stage deployment (layout = stages)")
    health_check_period_s: float = Field(10.0, gt=0, description="how often Ray asks each replica check_health")
    health_check_timeout_s: float = Field(30.0, gt=0, description="a health check slower than this fails")
    graceful_shutdown_timeout_s: float | None = Field(
        None, ge=0, description="a stopping replica's requests may finish this long (default: [options.serve] "
        "shutdown_grace_s), then Ray kills it")
    runtime_env: dict = Field(default_factory=dict, description="Ray runtime_env of every replica (env_vars, ...)")

    @model_validator(mode="after")
    def _check(self) -> "RayOptions":
        unknown = sorted(set(self.stages) - set(REMOTE_STAGES))
        if unknown:
            raise ValueError(f"stages: unknown stage {unknown[0]!r}: choose from {', '.join(REMOTE_STAGES)}")
        if len(set(self.remote_stages)) != len(self.remote_stages):
            raise ValueError("remote_stages names a stage twice")
        return self

    def deployed_stages(self) -> list[str]:
        """The stages in deployments of their own (none with ``layout = "pipeline"``)."""
        return [s for s in REMOTE_STAGES if s in self.remote_stages] if self.layout == "stages" else []


def ray_options(settings: Settings, **flags) -> RayOptions:
    """``[options.ray]`` of ``settings``, then the flags given (``replicas=``, ``address=``; None: not
    given). Raises :class:`ConfigError` naming the field and the reason."""
    options = plugin_options(settings, OPTIONS_NAME, RayOptions)
    updates = {name: value for name, value in flags.items() if value is not None}
    if updates:
        data = options.model_dump(exclude_unset=True)
        if "replicas" in updates:
            data.pop("autoscaling", None)  # --replicas N: a fixed count, whatever the config says
        try:
            options = RayOptions.model_validate({**data, **updates})
        except Exception as exc:  # a pydantic ValidationError
            raise ConfigError(f"invalid ray option (flags): {exc}") from None
    return options


def _on_cuda(settings: Settings) -> bool:
    return settings.device == "cuda" or settings.device.startswith("cuda:")


def replica_gpus(replica: ReplicaOptions, settings: Settings, holds_models: bool = True) -> float:
    """GPUs per replica: the configured ``num_gpus``, else 1 on cuda when the replica runs models on
    the device, else 0."""
    if replica.num_gpus is not None:
        return replica.num_gpus
    return 1.0 if holds_models and _on_cuda(settings) else 0.0


def deployment_options(replica: ReplicaOptions, ray: RayOptions, serve: ServeOptions, settings: Settings,
                       name: str, holds_models: bool = True) -> dict:
    """The keyword arguments of ``Deployment.options(...)`` for one deployment."""
    actor = {"num_cpus": replica.num_cpus, "num_gpus": replica_gpus(replica, settings, holds_models)}
    if replica.memory_gb is not None:
        actor["memory"] = int(replica.memory_gb * 1024 ** 3)
    if ray.runtime_env:
        actor["runtime_env"] = dict(ray.runtime_env)
    grace = serve.shutdown_grace_s if ray.graceful_shutdown_timeout_s is None else ray.graceful_shutdown_timeout_s
    ongoing = replica.max_ongoing_requests or serve.max_queue
    most = replica.autoscaling.max_replicas if replica.autoscaling is not None else replica.replicas
    queued = most * ongoing + serve.max_queue if replica.max_queued_requests is None else replica.max_queued_requests
    options = {
        "name": name,
        "ray_actor_options": actor,
        "max_ongoing_requests": ongoing,
        "max_queued_requests": queued,
        "backpressure_config": {"status_code": 429, "retry_after_s": float(serve.retry_after_s)},
        "health_check_period_s": ray.health_check_period_s,
        "health_check_timeout_s": ray.health_check_timeout_s,
        "graceful_shutdown_timeout_s": grace,
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    if replica.autoscaling is not None:
        options["autoscaling_config"] = replica.autoscaling.config()
    else:
        options["num_replicas"] = replica.replicas
    if replica.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = replica.max_replicas_per_node
    return options


def stage_replica_options(ray: RayOptions, stage: str) -> ReplicaOptions:
    """``[options.ray.stages.<stage>]``, or one replica of 1 CPU when the table is absent."""
    return ray.stages.get(stage) or ReplicaOptions()


def replica_settings(settings: Settings) -> Settings:
    """``settings`` for a replica: ``cuda:N`` becomes ``cuda``, since Ray gives each replica its own
    GPU(s) (``num_gpus``) and makes them the only visible ones (``CUDA_VISIBLE_DEVICES``)."""
    if settings.device.startswith("cuda:"):
        from csm_core.config import apply_overrides

        return apply_overrides(settings, {"device": "cuda"}, "[options.ray] (a replica uses the GPU Ray gives it)")
    return settings


def front_settings(settings: Settings, ray: RayOptions) -> Settings:
    """The settings of the front replicas with ``layout = "stages"``: each remote stage is the
    ``ray-remote`` implementation (a deployment handle); with the tts stage remote and no GPU of its
    own (``num_gpus`` unset or 0), the front replica runs its tokenizer on the CPU."""
    from csm_core.config import apply_overrides

    stages = ray.deployed_stages()
    if not stages:
        return settings
    overrides = {f"stages.{stage}": REMOTE_IMPLEMENTATION for stage in stages}
    if _on_cuda(settings) and "tts" in stages and replica_gpus(ray, settings, holds_models=False) == 0:
        overrides["device"] = "cpu"
    return apply_overrides(settings, overrides, "[options.ray] layout = \"stages\"")
