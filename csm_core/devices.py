"""Choosing the device a backend runs on; a fallback happens only where the config allows it."""

from __future__ import annotations

from typing import Callable

from csm_core.errors import BackendUnavailable


def cuda_status() -> tuple[bool, str]:
    """(usable, reason) for CUDA through torch, importing torch only now."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install 'csm-multi[torch]')"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return False, f"torch {torch.__version__} ({build}) sees no CUDA device"
    return True, f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def resolve_device(requested: str, allow_fallback: bool, report: Callable[[str], None]) -> str:
    """``auto`` -> ``cuda`` when usable, else ``cpu``. ``cuda`` that is not usable is an error unless
    ``allow_fallback``, in which case the run goes on on ``cpu`` and the fallback is reported."""
    if requested == "cpu":
        return "cpu"
    usable, reason = cuda_status()
    if requested == "auto":
        return "cuda" if usable else "cpu"
    if usable:
        return requested
    if allow_fallback:
        report(f"device {requested!r} is not usable ({reason}); falling back to 'cpu' as allow_fallback permits")
        return "cpu"
    raise BackendUnavailable(
        f"device {requested!r} is not usable: {reason}. Use --device cpu, or set allow_fallback = true "
        "to continue on the CPU when CUDA fails"
    )
