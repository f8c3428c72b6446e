"""ONNX Runtime sessions: explicit providers, thread settings, optimization level, optimized-model reuse.

Options come from ``settings.options["onnxruntime"]``:

- ``intra_op_num_threads`` (int >= 0, 0 = ORT's default), ``inter_op_num_threads`` (int >= 0),
- ``graph_optimization_level``: ``disable`` | ``basic`` | ``extended`` | ``all`` (default ``all``);
- ``fused_frame`` (bool): not a session setting but the engines' (:mod:`csm_onnxruntime.frame_decoder`),
  accepted here so that the table validates as a whole.

``SessionOptions.memory_reuse`` (not a config option) is for graphs whose size makes ORT's memory-reuse
planning slow (it grows faster than linearly with the node count: the 5,000-node fused frame graph takes
8 s to plan, 0.15 s without): a graph's opener turns it off with :func:`dataclasses.replace`.

The optimized graph is saved beside the artifact (named by the artifact's checksum, the provider, the
level and the onnxruntime version, which alone can read it) with a checksum file
(:mod:`csm_core.artifact_check`), and loaded instead of the original next time, with optimizations off,
once it verifies. One that does not (truncated, changed, its checksum file missing or wrong) or that
onnxruntime cannot load is reported, removed and made again from the verified original: a damaged
optimized graph never runs, and whatever opens the sessions (a turn, ``csmctl export``) repairs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from csm_core.artifact_check import checksum_path, discard, install, problem_with
from csm_core.errors import BackendUnavailable, ConfigError, CsmError
from csm_onnxruntime import FUSED_FRAME_OPTION

LEVELS = ("disable", "basic", "extended", "all")
KNOWN_OPTIONS = ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level")
ENGINE_OPTIONS = (FUSED_FRAME_OPTION,)  # [options.onnxruntime] keys the engines read, not the sessions


@dataclass(frozen=True)
class SessionOptions:
    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0
    graph_optimization_level: str = "all"
    memory_reuse: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "SessionOptions":
        options = dict(options or {})
        unknown = sorted(set(options) - set(KNOWN_OPTIONS) - set(ENGINE_OPTIONS))
        if unknown:
            raise ConfigError(
                f"options.onnxruntime.{unknown[0]}: unknown option; known: {', '.join(KNOWN_OPTIONS + ENGINE_OPTIONS)}"
            )
        for name in ENGINE_OPTIONS:
            options.pop(name, None)
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            value = options.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"options.onnxruntime.{name}={value!r}: must be an integer >= 0 (0 = ORT default)")
        level = options.get("graph_optimization_level", "all")
        if level not in LEVELS:
            raise ConfigError(f"options.onnxruntime.graph_optimization_level={level!r}: choose one of {', '.join(LEVELS)}")
        return cls(**options)


def providers_for(device: str) -> list:
    """The provider list for a device string (``cpu``, ``cuda``, ``cuda:N``)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"device {device!r}: the onnxruntime backend runs on cpu, cuda or cuda:N")


def _level(ort, name: str):
    return {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[name]


def missing_provider(device: str) -> str | None:
    """Why this onnxruntime has no provider for ``device`` (its build lacks it), or None when it has one."""
    import onnxruntime as ort

    providers = providers_for(device)
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    available = ort.get_available_providers()
    if wanted in available:
        return None
    return f"onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(available)})"


def require_provider(what: str, device: str, *, allow_fallback: bool) -> None:
    """Raise :class:`BackendUnavailable` before ``what`` is exported when its provider is missing.

    With ``allow_fallback`` nothing is raised: :func:`create_session` falls back and reports it.
    """
    problem = missing_provider(device)
    if problem is not None and not allow_fallback:
        raise _unavailable(what, device, problem)


def _unavailable(what: str, device: str, problem: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"onnxruntime cannot run {what} on {device!r}: {problem}. Use --device cpu, or set "
        "allow_fallback = true to continue on the CPU"
    )


def create_session(
    path: Path,
    sha256: str,
    device: str,
    options: SessionOptions,
    *,
    allow_fallback: bool,
    report: Callable[[str], None],
):
    """(session, device actually used) for the ONNX file at ``path`` (checksum ``sha256``).

    CUDA that the session did not get (ORT only logs that and runs on the CPU) raises
    :class:`BackendUnavailable` naming the available providers, unless ``allow_fallback``: then the
    session runs on the CPU and the fallback is reported.
    """
    import onnxruntime as ort

    providers = providers_for(device)
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    available = ort.get_available_providers()
    session = None
    problem = missing_provider(device)
    if problem is None:
        session = _open(ort, path, sha256, wanted, providers, options, report)
        if wanted not in session.get_providers():
            problem = (
                f"the session did not get {wanted} (it got {', '.join(session.get_providers())}; "
                f"onnxruntime lists as available: {', '.join(available)}) - are the CUDA/cuDNN libraries installed?"
            )
    if problem is None:
        return session, device
    if not allow_fallback:
        raise _unavailable(path.name, device, problem)
    report(f"onnxruntime: {problem}; running {path.name} on the CPU as allow_fallback permits")
    return _open(ort, path, sha256, "CPUExecutionProvider", ["CPUExecutionProvider"], options, report), "cpu"


def optimized_path(path: Path, sha256: str, provider: str, level: str, ort_version: str | None = None) -> Path:
    """Where the optimized graph of the artifact ``path`` (identity ``sha256``) is kept for ``provider``,
    ``level`` and ``ort_version`` (default: the installed onnxruntime's)."""
    if ort_version is None:
        import onnxruntime

        ort_version = onnxruntime.__version__
    return path.with_name(f"{path.stem}.{sha256[:12]}.{provider}.{level}.ort{ort_version}.opt.onnx")


def _session_options(ort, options: SessionOptions, level: str):
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_num_threads
    so.inter_op_num_threads = options.inter_op_num_threads
    so.graph_optimization_level = _level(ort, level)
    so.enable_mem_reuse = options.memory_reuse
    return so


def _open_optimized(ort, optimized: Path, providers: list, options: SessionOptions, report: Callable[[str], None]):
    """A session over the saved optimized graph when it verifies and loads; else None, after reporting
    why and removing it (and its checksum file). :class:`CsmError` naming the file when it cannot be removed."""
    problem = problem_with(optimized)
    if problem is None:
        try:
            return ort.InferenceSession(str(optimized), _session_options(ort, options, "disable"), providers=providers)
        except Exception as exc:  # noqa: BLE001 - a file onnxruntime rejects is made again from the original
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            problem = f"onnxruntime cannot load it ({type(exc).__name__}: {first_line})"
    report(f"onnxruntime: rebuilding {optimized.name}: {problem}")
    try:
        discard(optimized)
    except OSError as exc:
        raise CsmError(
            f"the saved optimized graph {optimized} cannot be used ({problem}) and cannot be removed "
            f"({exc.strerror or exc}): delete it and {checksum_path(optimized).name}, or make its folder writable"
        ) from None
    return None


def _open(ort, path: Path, sha256: str, provider: str, providers: list, options: SessionOptions,
          report: Callable[[str], None]):
    """A session for the verified artifact ``path``: from its saved optimized graph when that verifies,
    else optimized now from ``path``, saving the optimized graph (with its checksum file) for next time."""
    level = options.graph_optimization_level
    if level == "disable":
        return ort.InferenceSession(str(path), _session_options(ort, options, level), providers=providers)
    optimized = optimized_path(path, sha256, provider, level, ort.__version__)
    if optimized.is_file() or checksum_path(optimized).is_file():
        session = _open_optimized(ort, optimized, providers, options, report)
        if session is not None:
            return session
    so = _session_options(ort, options, level)
    tmp = optimized.with_name(f".{optimized.name}.{os.getpid()}.tmp")
    so.optimized_model_filepath = str(tmp)
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
        if tmp.is_file() and provider in session.get_providers():
            install(tmp, optimized)
    finally:
        tmp.unlink(missing_ok=True)
    return session
