"""The check optimizers that act on one backend's engines make first: is the tts stage on such a backend?"""

from __future__ import annotations

from csm_core.errors import CsmError


def require_tts_backend(settings, optimizer: str, backends: tuple[str, ...], why: str, instead: str = "") -> str:
    """The backend the tts stage runs on, when it is one of ``backends``; else a :class:`CsmError` before
    any model loads, naming the optimizer, what it needs (``why``), the backend in use, and what to do
    (``backend = ...``, then ``instead``, an alternative where there is one, or removing the optimizer)."""
    backend = settings.backend_for("tts")
    if backend in backends:
        return backend
    plural = "s" if len(backends) > 1 else ""
    use = " or ".join(f'"{name}"' for name in backends)
    raise CsmError(
        f"the {optimizer} optimizer runs on the {' and '.join(backends)} backend{plural} ({why}), but the tts "
        f"stage runs on {backend!r}: use backend = {use} (or backends.tts){instead}, or remove {optimizer} from "
        "optimizers"
    )
