"""What an engine depends on besides its graph: the TensorRT version, the CUDA version, the GPU.

A serialized TensorRT engine runs only with the TensorRT version that built it and only on GPUs of
the compute capability it was built for; these facts go into the engine cache key
(:mod:`csm_tensorrt.engine_cache`). Nothing here imports ``tensorrt`` or ``torch`` at module level.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
from dataclasses import asdict, dataclass

MIN_TENSORRT = (10, 12)  # strong typing without the weakly-typed flags: 10.12 and later, 11.x
INSTALL_HINT = (
    "pip install 'csm-multi[tensorrt]' (needs NVIDIA's package index reachable, or the TensorRT "
    "libraries installed from NVIDIA's tar/deb packages)"
)


def parse_version(version: str) -> tuple[int, int]:
    """``"10.13.0.35"`` -> ``(10, 13)``; raises ``ValueError`` naming the string otherwise."""
    match = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    if not match:
        raise ValueError(f"cannot read a TensorRT version from {version!r}: expected 'MAJOR.MINOR[...]'")
    return int(match.group(1)), int(match.group(2))


def version_problem(version: str) -> str | None:
    """Why this TensorRT version cannot be used, or ``None`` when it can (10.12+ or 11.x and later)."""
    major_minor = parse_version(version)
    if major_minor < MIN_TENSORRT:
        need = ".".join(map(str, MIN_TENSORRT))
        return f"TensorRT {version} is too old: the tensorrt backend needs {need} or later. {INSTALL_HINT}"
    return None


def installed_tensorrt_version() -> str | None:
    """The installed ``tensorrt`` version from package metadata, without importing it; ``None`` if absent.

    The wheel may be installed as ``tensorrt``, ``tensorrt-cu12``/``-cu13`` or only as the ``tensorrt``
    module (from NVIDIA's tar packages); the last case is found by module spec and reported as ``"unknown"``.
    """
    for distribution in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "unknown" if importlib.util.find_spec("tensorrt") is not None else None


@dataclass(frozen=True)
class GpuIdentity:
    """The facts about the build machine an engine is valid for."""

    tensorrt_version: str
    cuda_version: str  # the CUDA runtime torch was built with, e.g. "12.8"
    gpu_name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def slug(self) -> str:
        """A file-name-safe label, e.g. ``nvidia-h100-80gb-hbm3-sm90-trt10.13.0.35``."""
        name = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")
        cc = self.compute_capability.replace(".", "")
        version = re.sub(r"[^0-9.]+", "", self.tensorrt_version) or "unknown"
        return f"{name}-sm{cc}-trt{version}"


def gpu_identity(device_index: int = 0) -> GpuIdentity:
    """Detect TensorRT, CUDA and the GPU ``cuda:device_index`` (imports tensorrt and torch now)."""
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("gpu_identity needs a CUDA device: torch.cuda.is_available() is False")
    major, minor = torch.cuda.get_device_capability(device_index)
    return GpuIdentity(
        tensorrt_version=str(trt.__version__),
        cuda_version=str(torch.version.cuda),
        gpu_name=torch.cuda.get_device_name(device_index),
        compute_capability=f"{major}.{minor}",
    )
