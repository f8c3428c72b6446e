"""What a benchmark JSON says about the machine it ran on: CPU, cores, library versions, GPU."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import sys
from pathlib import Path

LIBRARIES = ("torch", "onnxruntime-gpu", "onnxruntime", "tensorrt", "transformers", "numpy", "csm-multi")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict[str, str]:
    """Installed versions of the libraries that set the speed, read from package metadata (no imports)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def gpu_name() -> str | None:
    """The first CUDA device's name when torch is loaded and sees one, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def machine_info() -> dict:
    """CPU model, logical cores, cores this process may use, OS, Python, library versions, GPU."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch = sys.modules.get("torch")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "gpu": gpu_name(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
