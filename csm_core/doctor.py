"""What `csmctl doctor` checks: runtimes installed, CUDA, and whether each backend can run here.

"Here" means this machine, not what a package was built for: onnxruntime-gpu lists
``CUDAExecutionProvider`` on a machine without a GPU too, so CUDA is reported usable only where the
runtime has CUDA support *and* the NVIDIA driver reports a CUDA device (:func:`cuda_device_count`).
"""

from __future__ import annotations

import ctypes
import importlib.metadata as metadata
import sys
from dataclasses import dataclass
from typing import Callable

from csm_core.errors import BackendUnavailable
from csm_core.registry import Registry

RUNTIMES = {
    "torch": "torch",
    "transformers": "transformers",
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime-gpu",
    "tensorrt": "tensorrt",
}
# Distributions that all install the one ``onnxruntime`` import package; two at once overwrite each
# other's files (pip does not stop it), and which providers work then depends on install order.
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime", "onnxruntime-directml", "onnxruntime-openvino")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def installed_versions(names, path: list[str] | None = None) -> dict[str, str | None]:
    """Distribution name -> installed version (None when absent), searched on ``path`` (default
    ``sys.path``). The first match on the path wins, as for imports."""
    found = {}
    for name in names:
        dist = next(iter(metadata.distributions(name=name, path=path) if path is not None
                         else metadata.distributions(name=name)), None)
        found[name] = dist.version if dist is not None else None
    return found


def onnxruntime_clash(versions: dict[str, str | None]) -> Check | None:
    """A failed check naming what to uninstall when more than one onnxruntime distribution is installed."""
    installed = [name for name in ONNXRUNTIME_DISTRIBUTIONS if versions.get(name)]
    if len(installed) < 2:
        return None
    listing = ", ".join(f"{name} {versions[name]}" for name in installed)
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in installed else installed[0]
    return Check(
        "onnxruntime packages",
        False,
        f"{listing} are all installed; they share the one onnxruntime module and the last one installed "
        f"overwrote the others' files. Uninstall all of them, then install the one you want "
        f"({keep} for CUDA, onnxruntime for CPU only): pip uninstall -y {' '.join(installed)} && "
        f"pip install {keep}",
    )


def runtime_checks(path: list[str] | None = None) -> list[Check]:
    """Installed runtime packages, the onnxruntime/onnxruntime-gpu clash, and CUDA.

    ``path``: the folders to look for installed distributions in (default ``sys.path``).
    """
    from csm_core.devices import cuda_status

    checks = []
    versions = installed_versions([*RUNTIMES.values(), *ONNXRUNTIME_DISTRIBUTIONS], path)
    for name in ("torch", "transformers"):
        checks.append(Check(name, versions[name] is not None, versions[name] or "not installed"))
    providers = [f"{dist} {versions[dist]}" for dist in ONNXRUNTIME_DISTRIBUTIONS if versions[dist]]
    checks.append(Check("onnxruntime", bool(providers), ", ".join(providers) or "not installed"))
    checks.append(Check("tensorrt", versions["tensorrt"] is not None, versions["tensorrt"] or "not installed"))
    clash = onnxruntime_clash(versions)
    if clash is not None:
        checks.append(clash)
    usable, reason = cuda_status() if versions["torch"] else (False, "torch is not installed")
    checks.append(Check("cuda", usable, reason))
    if any(versions[dist] for dist in ONNXRUNTIME_DISTRIBUTIONS):
        checks.append(onnxruntime_cuda_check())
    return checks


def cuda_device_count() -> tuple[int, str]:
    """(CUDA devices the NVIDIA driver reports on this machine, what was found), asked of the driver
    (``libcuda``: ``cuInit``, ``cuDeviceGetCount``) directly, so the answer does not depend on how torch
    or onnxruntime were built. ``CUDA_VISIBLE_DEVICES`` applies."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    driver = None
    for name in names:
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if driver is None:
        return 0, f"no NVIDIA driver ({names[0]} not found)"
    status = driver.cuInit(0)
    if status == 100:  # CUDA_ERROR_NO_DEVICE
        return 0, "the NVIDIA driver sees no CUDA device"
    if status != 0:
        return 0, f"the NVIDIA driver did not start (cuInit error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return 0, f"the NVIDIA driver could not count devices (cuDeviceGetCount error {status})"
    if count.value == 0:
        return 0, "the NVIDIA driver sees no CUDA device"
    return count.value, f"{count.value} CUDA device{'s' if count.value > 1 else ''}"


def onnxruntime_cuda_check(device_count: Callable[[], tuple[int, str]] = cuda_device_count) -> Check:
    """Whether ONNX Runtime can run on CUDA here: its build has ``CUDAExecutionProvider`` and
    ``device_count()`` finds a CUDA device. (A session can still fail later when the CUDA/cuDNN libraries
    that provider loads are missing; the backend says so when it opens one.)"""
    try:
        import onnxruntime as ort
    except Exception as exc:  # a broken install (see the clash check) must not take doctor down
        return Check("onnxruntime cuda", False, f"onnxruntime does not import: {type(exc).__name__}: {exc}")
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return Check(
            "onnxruntime cuda", False,
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it has {', '.join(providers)}): "
            "pip install onnxruntime-gpu for CUDA",
        )
    count, found = device_count()
    if count == 0:
        return Check("onnxruntime cuda", False,
                     f"onnxruntime {ort.__version__} has CUDAExecutionProvider, but {found} on this machine")
    return Check("onnxruntime cuda", True, f"CUDAExecutionProvider, {found}")


def usable_backends(registry: Registry) -> list[str]:
    """The names of the registered backends whose ``check()`` passes here."""
    return [check.name.removeprefix("backend ") for check in backend_checks(registry) if check.ok]


def backend_checks(
    registry: Registry, device_count: Callable[[], tuple[int, str]] = cuda_device_count
) -> list[Check]:
    """Each registered backend: usable here, or why not, and which of its devices this machine has.

    A backend declares the devices it supports; ``cuda`` is listed as a device here only when
    ``device_count()`` finds one and the backend's own ``device_check`` (its runtime's build) does not
    object, else it is named with the reason.
    """
    checks = []
    cuda: tuple[int, str] | None = None
    for name, registered in sorted(registry.backends.items()):
        backend = registered.record
        try:
            backend.check()
        except BackendUnavailable as exc:
            checks.append(Check(f"backend {name}", False, str(exc)))
        except Exception as exc:  # a plugin's check must not take doctor down
            checks.append(Check(f"backend {name}", False, f"check failed: {type(exc).__name__}: {exc}"))
        else:
            here, missing = [], []
            for device in backend.devices:
                if device == "cuda":
                    cuda = cuda or device_count()
                    if cuda[0] == 0:
                        missing.append(f"no cuda: {cuda[1]}")
                        continue
                problem = _device_problem(backend, device)
                if problem is not None:
                    missing.append(f"no {device}: {problem}")
                    continue
                here.append(device)
            devices = ", ".join(here) + "".join(f"; {m}" for m in missing)
            components = ", ".join(sorted(backend.engines))
            checks.append(Check(f"backend {name}", True, f"usable ({components}; devices here: {devices})"))
    return checks


def _device_problem(backend, device: str) -> str | None:
    """Why ``backend``'s runtime cannot use ``device`` here (its ``device_check``), or None."""
    if backend.device_check is None:
        return None
    try:
        return backend.device_check(device)
    except Exception as exc:  # noqa: BLE001 - a plugin's check must not take doctor down
        return f"device check failed: {type(exc).__name__}: {exc}"
