"""What `csmctl doctor` checks: the model runtimes (torch, transformers), CUDA, what each backend
checks of its own runtime (its ``Backend.doctor_checks``), and whether each backend can run here.

"Here" means this machine, not what a package was built for: a runtime built for CUDA can list CUDA
support on a machine without a GPU, so ``cuda`` is listed among a backend's devices only where the
NVIDIA driver reports a CUDA device (:func:`cuda_device_count`) and the backend's ``device_check``
does not object.
"""

from __future__ import annotations

import ctypes
import importlib.metadata as metadata
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from csm_core.errors import BackendUnavailable

if TYPE_CHECKING:
    from csm_core.registry import Registry

# The distributions of the ``torch`` extra that every model stage needs, whatever the backend.
RUNTIMES = ("torch", "transformers")


@dataclass(frozen=True)
class Check:
    """One line of ``csmctl doctor``: what was checked, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


def installed_versions(names: Iterable[str], path: list[str] | None = None) -> dict[str, str | None]:
    """Distribution name -> installed version (None when absent), searched on ``path`` (default
    ``sys.path``). The first match on the path wins, as for imports."""
    found = {}
    for name in names:
        dist = next(iter(metadata.distributions(name=name, path=path) if path is not None
                         else metadata.distributions(name=name)), None)
        found[name] = dist.version if dist is not None else None
    return found


def runtime_checks(path: list[str] | None = None) -> list[Check]:
    """The installed model runtimes (:data:`RUNTIMES`) and CUDA through torch.

    ``path``: the folders to look for installed distributions in (default ``sys.path``). What a backend
    needs besides these, it checks itself (:func:`backend_checks`).
    """
    from csm_core.devices import cuda_status

    versions = installed_versions(RUNTIMES, path)
    checks = [Check(name, versions[name] is not None, versions[name] or "not installed") for name in RUNTIMES]
    usable, reason = cuda_status() if versions["torch"] else (False, "torch is not installed")
    checks.append(Check("cuda", usable, reason))
    return checks


def cuda_device_count() -> tuple[int, str]:
    """(CUDA devices the NVIDIA driver reports on this machine, what was found), asked of the driver
    (``libcuda``: ``cuInit``, ``cuDeviceGetCount``) directly, so the answer does not depend on how torch
    or a backend's runtime were built. ``CUDA_VISIBLE_DEVICES`` applies."""
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


def usable_backends(registry: Registry) -> list[str]:
    """The names of the registered backends whose ``check()`` passes here."""
    return [check.name.removeprefix("backend ") for check in usability_checks(registry) if check.ok]


def backend_checks(
    registry: Registry, device_count: Callable[[], tuple[int, str]] = cuda_device_count
) -> list[Check]:
    """What every registered backend checks of its own runtime (:func:`runtime_checks_of`), then
    whether each can run here (:func:`usability_checks`)."""
    return runtime_checks_of(registry) + usability_checks(registry, device_count)


def runtime_checks_of(registry: Registry) -> list[Check]:
    """The checks each backend's ``doctor_checks`` returns (its packages, its runtime's view of the
    devices), backends in name order. One that raises is reported as a failed check of its own."""
    checks: list[Check] = []
    for name, registered in sorted(registry.backends.items()):
        doctor_checks = registered.record.doctor_checks
        if doctor_checks is None:
            continue
        try:
            checks.extend(doctor_checks())
        except Exception as exc:  # noqa: BLE001 - a plugin's checks must not take doctor down
            checks.append(Check(f"{name} checks", False, f"doctor checks failed: {type(exc).__name__}: {exc}"))
    return checks


def usability_checks(
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
