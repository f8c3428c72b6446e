"""ONNX Runtime sessions: explicit providers, thread settings, optimization level, optimized-model reuse.

Options come from ``settings.options["onnxruntime"]``:

- ``intra_op_num_threads`` (int >= 0, 0 = ORT's default), ``inter_op_num_threads`` (int >= 0),
- ``graph_optimization_level``: ``disable`` | ``basic`` | ``extended`` | ``all`` (default ``all``).

The optimized graph is saved beside the artifact (named by the artifact's checksum, the provider and the
level) and loaded instead of the original next time, with optimizations off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from csm_core.errors import BackendUnavailable, ConfigError

LEVELS = ("disable", "basic", "extended", "all")
KNOWN_OPTIONS = ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level")


@dataclass(frozen=True)
class SessionOptions:
    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0
    graph_optimization_level: str = "all"

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "SessionOptions":
        options = dict(options or {})
        unknown = sorted(set(options) - set(KNOWN_OPTIONS))
        if unknown:
            raise ConfigError(f"options.onnxruntime.{unknown[0]}: unknown option; known: {', '.join(KNOWN_OPTIONS)}")
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
    problem = None
    if wanted not in available:
        problem = f"onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(available)})"
    else:
        session = _open(ort, path, sha256, wanted, providers, options)
        if wanted not in session.get_providers():
            problem = (
                f"the session did not get {wanted} (it got {', '.join(session.get_providers())}; "
                f"onnxruntime lists as available: {', '.join(available)}) - are the CUDA/cuDNN libraries installed?"
            )
    if problem is None:
        return session, device
    if not allow_fallback:
        raise BackendUnavailable(
            f"onnxruntime cannot run {path.name} on {device!r}: {problem}. Use --device cpu, or set "
            "allow_fallback = true to continue on the CPU"
        )
    report(f"onnxruntime: {problem}; running {path.name} on the CPU as allow_fallback permits")
    return _open(ort, path, sha256, "CPUExecutionProvider", ["CPUExecutionProvider"], options), "cpu"


def optimized_path(path: Path, sha256: str, provider: str, level: str) -> Path:
    return path.with_name(f"{path.stem}.{sha256[:12]}.{provider}.{level}.opt.onnx")


def _open(ort, path: Path, sha256: str, provider: str, providers: list, options: SessionOptions):
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_num_threads
    so.inter_op_num_threads = options.inter_op_num_threads
    level = options.graph_optimization_level
    optimized = optimized_path(path, sha256, provider, level)
    if level != "disable" and optimized.is_file():
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(optimized), so, providers=providers)
        except Exception:  # noqa: BLE001 - an unreadable optimized file is rebuilt below
            optimized.unlink(missing_ok=True)
            so = ort.SessionOptions()
            so.intra_op_num_threads = options.intra_op_num_threads
            so.inter_op_num_threads = options.inter_op_num_threads
    so.graph_optimization_level = _level(ort, level)
    tmp = optimized.with_name(f".{optimized.name}.{os.getpid()}.tmp")
    if level != "disable":
        so.optimized_model_filepath = str(tmp)
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
        if level != "disable" and tmp.is_file() and provider in session.get_providers():
            os.replace(tmp, optimized)
    finally:
        tmp.unlink(missing_ok=True)
    return session
