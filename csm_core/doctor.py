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


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def runtime_checks() -> list[Check]:
    """Installed runtime packages, the onnxruntime/onnxruntime-gpu clash, and CUDA."""
    from csm_core.devices import cuda_status

    checks = []
    versions = {name: _version(dist) for name, dist in RUNTIMES.items()}
    for name in ("torch", "transformers"):
        checks.append(Check(name, versions[name] is not None, versions[name] or "not installed"))
    providers = [f"{dist} {versions[dist]}" for dist in ("onnxruntime-gpu", "onnxruntime") if versions[dist]]
    checks.append(Check("onnxruntime", bool(providers), ", ".join(providers) or "not installed"))
    checks.append(Check("tensorrt", versions["tensorrt"] is not None, versions["tensorrt"] or "not installed"))
    if versions["onnxruntime"] and versions["onnxruntime-gpu"]:
        checks.append(
            Check(
                "onnxruntime packages",
                False,
                f"both onnxruntime {versions['onnxruntime']} and onnxruntime-gpu "
                f"{versions['onnxruntime-gpu']} are installed; they share one module and the last "
                "installed wins. Run: pip uninstall -y onnxruntime onnxruntime-gpu && "
                "pip install onnxruntime-gpu",
            )
        )
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
