"""Building a serialized TensorRT engine from an ONNX file (TensorRT 10.12+ and 11.x Python API).

The network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: required on 10.x for
the graph's own dtypes to be obeyed, accepted and implied on 11.x); precision is therefore whatever
:mod:`csm_tensorrt.precision` wrote into the graph. One optimization profile covers every dynamic
input. A timing cache per GPU and TensorRT version makes rebuilds fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from csm_core.errors import CsmError

from .engine_cache import write_atomic

Shape = tuple[int, ...]


class TrtBuildError(CsmError):
    """TensorRT could not parse or build a graph; the message carries the parser's or builder's errors."""


def check_profile(
    network_inputs: Mapping[str, Shape], profiles: Mapping[str, tuple[Shape, Shape, Shape]], graph: str
) -> None:
    """Check that ``profiles`` gives a range to each dynamic input (``-1`` axes) and agrees with static axes."""
    for name, dims in network_inputs.items():
        dynamic = any(d < 0 for d in dims)
        if name not in profiles:
            if dynamic:
                raise TrtBuildError(f"{graph}: input {name!r} has dynamic shape {tuple(dims)} but no profile range")
            continue
        for label, shape in zip(("min", "opt", "max"), profiles[name]):
            if len(shape) != len(dims) or any(d >= 0 and s != d for d, s in zip(dims, shape)):
                raise TrtBuildError(
                    f"{graph}: profile {label} shape {tuple(shape)} for input {name!r} does not fit its shape {tuple(dims)}"
                )
    extra = sorted(set(profiles) - set(network_inputs))
    if extra:
        raise TrtBuildError(f"{graph}: profile names inputs the network does not have: {extra}")


def network_flags(trt) -> int:
    """Creation flags: strongly typed where the enum has it (10.12+: yes; 11.x: implied and accepted)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def parser_errors(parser) -> list[str]:
    """The ONNX parser's errors as readable lines (node, operator, description)."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = []
        for attribute in ("node_name", "node_operator"):
            getter = getattr(error, attribute, None)
            value = getter() if callable(getter) else None
            if value:
                where.append(str(value))
        node = error.node() if callable(getattr(error, "node", None)) else -1
        prefix = f"node {node}" + (f" ({' '.join(where)})" if where else "") if node >= 0 else "graph"
        lines.append(f"{prefix}: {error.desc()}")
    return lines


class TimingCache:
    """A serialized ``ITimingCache`` file for one GPU and TensorRT version."""

    def __init__(self, path: Path, report: Callable[[str], None]) -> None:
        self.path, self.report = path, report

    def attach(self, config) -> None:
        """Load the file (or start empty) and set it on the builder ``config``."""
        data = b""
        if self.path.exists():
            data = self.path.read_bytes()
        try:
            cache = config.create_timing_cache(data)
        except Exception as exc:  # a damaged or foreign file: start over, say so
            self.report(f"tensorrt: ignoring the timing cache {self.path} ({exc}); starting a new one")
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    def save(self, config) -> None:
        cache = config.get_timing_cache()
        if cache is not None:
            write_atomic(self.path, bytes(cache.serialize()))


def build_engine(
    onnx_path: str | Path,
    profiles: Mapping[str, tuple[Shape, Shape, Shape]],
    *,
    workspace_bytes: int,
    timing_cache: Path | None = None,
    report: Callable[[str], None] = print,
) -> bytes:
    """Parse ``onnx_path`` (external data beside it) and build a serialized engine.

    ``profiles`` maps input name -> (min, opt, max) shapes for every input with a dynamic axis.
    Raises :class:`TrtBuildError` with the parser's errors, or when the builder returns nothing.
    """
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        details = "\n  ".join(parser_errors(parser)) or "(no details)"
        raise TrtBuildError(f"TensorRT could not parse {onnx_path}:\n  {details}")

    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs[tensor.name] = tuple(tensor.shape)
    check_profile(inputs, profiles, onnx_path.name)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profiles.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    cache = TimingCache(timing_cache, report) if timing_cache is not None else None
    if cache is not None:
        cache.attach(config)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(
            f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above); "
            f"profiles: {dict(profiles)}, workspace: {workspace_bytes / (1 << 30):.1f} GiB"
        )
    if cache is not None:
        cache.save(config)
    return bytes(serialized)
