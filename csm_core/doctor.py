"""What `csmctl doctor` checks: runtimes installed, CUDA, and whether each backend can run here."""

from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass

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
    return checks


def usable_backends(registry: Registry) -> list[str]:
    """The names of the registered backends whose ``check()`` passes here."""
    return [check.name.removeprefix("backend ") for check in backend_checks(registry) if check.ok]


def backend_checks(registry: Registry) -> list[Check]:
    """Each registered backend: usable here, or why not."""
    checks = []
    for name, registered in sorted(registry.backends.items()):
        backend = registered.record
        try:
            backend.check()
        except BackendUnavailable as exc:
            checks.append(Check(f"backend {name}", False, str(exc)))
        except Exception as exc:  # a plugin's check must not take doctor down
            checks.append(Check(f"backend {name}", False, f"check failed: {type(exc).__name__}: {exc}"))
        else:
            components = ", ".join(sorted(backend.engines))
            checks.append(Check(f"backend {name}", True, f"usable ({components}; devices: {', '.join(backend.devices)})"))
    return checks
