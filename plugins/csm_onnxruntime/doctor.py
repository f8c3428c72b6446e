"""What ``csmctl doctor`` lists about ONNX Runtime (the backend's ``doctor_checks``): the installed
ONNX Runtime distributions, a clash between two of them, and whether the runtime can use CUDA here.

"Here" means this machine: onnxruntime-gpu lists ``CUDAExecutionProvider`` on a machine without a GPU
too, so CUDA is reported usable only where the build has that provider *and* the NVIDIA driver reports
a CUDA device (:func:`csm_core.doctor.cuda_device_count`). Imports onnxruntime only to ask its providers.
"""

from __future__ import annotations

from typing import Callable

from csm_core.doctor import Check, cuda_device_count, installed_versions

# Distributions that all install the one ``onnxruntime`` import package; two at once overwrite each
# other's files (pip does not stop it), and which providers work then depends on install order.
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime", "onnxruntime-directml", "onnxruntime-openvino")


def checks(path: list[str] | None = None) -> list[Check]:
    """The installed distributions, their clash when there are two, and CUDA (when one is installed).

    ``path``: the folders to look for installed distributions in (default ``sys.path``).
    """
    versions = installed_versions(ONNXRUNTIME_DISTRIBUTIONS, path)
    installed = [f"{dist} {versions[dist]}" for dist in ONNXRUNTIME_DISTRIBUTIONS if versions[dist]]
    found = [Check("onnxruntime", bool(installed), ", ".join(installed) or "not installed")]
    clash = onnxruntime_clash(versions)
    if clash is not None:
        found.append(clash)
    if installed:
        found.append(onnxruntime_cuda_check())
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
