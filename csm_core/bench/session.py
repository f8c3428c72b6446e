"""One benchmark cell made ready to run: its settings, the checks that skip it, and the loaded pipeline.

A cell runs the way ``csmctl say`` does — a :class:`~csm_core.pipeline.Pipeline` from
:class:`~csm_core.config.Settings` — so optimizers act through the same ``configure`` overrides and
hooks as in real use. Generation is greedy with a fixed seed and frame count, and the silence guard's
patience is set to the frame count (the first frame is never silent, so it cannot fire): every backend
and optimizer set does the same number of frames unless the model emits the end-of-speech frame, and
the measured frame count is what the rates are computed from.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csm_core.bench.matrix import REFERENCE_BACKEND, Cell
from csm_core.errors import CsmError

BENCH_ENV_PREFIX = "CSM_BENCH_"  # variables of benchmarks/conftest.py
DEFAULT_TEXT = "The benchmark sentence is spoken the same way on every backend."
# Errors that mean "this cell cannot run here": skipped with the reason. CsmError is the project's
# deliberate, user-facing refusal (an unknown name, an unusable backend, an optimizer that does not
# apply to this backend or device, a precision a runtime cannot run); any other exception is a bug and
# makes the cell an error.
SKIP_ERRORS = (CsmError, NotImplementedError)


@dataclass(frozen=True)
class RunOptions:
    """How every cell runs. ``threads`` None leaves torch's and ONNX Runtime's defaults."""

    frames: int = 24
    repeats: int = 3
    warmup: int = 1
    text: str = DEFAULT_TEXT
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # None: the config's (default auto)
    config: Path | None = None  # a TOML file the cells' settings start from
    bandwidth_gbs: float | None = None  # None: measured

    def __post_init__(self) -> None:
        for name, low in (("frames", 1), ("repeats", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CsmError(f"--{name}={value!r}: must be an integer >= {low}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise CsmError(f"--threads={self.threads!r}: must be an integer >= 1 (leave it out for the default)")
        if self.bandwidth_gbs is not None and not self.bandwidth_gbs > 0:
            raise CsmError(f"--bandwidth-gbs={self.bandwidth_gbs!r}: must be > 0 (GB/s), or leave it out to measure")
        if not self.text.strip():
            raise CsmError("--text is empty: give a sentence to speak")


def cell_settings(cell: Cell, options: RunOptions):
    """The :class:`Settings` of ``cell``: the config file and ``CSM_*`` environment, then the cell's fields."""
    from csm_core.config import load_settings

    overrides: dict[str, Any] = {
        "models.preset": cell.preset,
        "backend": cell.backend,
        "optimizers": list(cell.optimizers),
        "device": options.device,
        "generation.max_new_frames": options.frames,
        "generation.max_audio_length_ms": None,
        "generation.temperature": 0.0,
        "generation.seed": options.seed,
        "generation.max_silent_frames": options.frames,
    }
    if options.threads is not None:
        overrides["options.onnxruntime.intra_op_num_threads"] = options.threads
    # The benchmarks' own CSM_BENCH_* variables are not settings (config.py would reject them as unknown).
    environ = {key: value for key, value in os.environ.items() if not key.startswith(BENCH_ENV_PREFIX)}
    settings = load_settings(options.config, overrides, environ)
    if settings.generation.max_audio_length_ms is not None:  # None values are not applied by load_settings
        from csm_core.config import apply_overrides

        settings = apply_overrides(settings, {"generation.max_audio_length_ms": None}, "csmctl bench")
    return settings


def skip_reason(cell: Cell, registry) -> str | None:
    """Why ``cell`` cannot run here (unknown backend or optimizer, backend unusable), or None."""
    if cell.backend == REFERENCE_BACKEND:
        if cell.optimizers:
            return "the transformers reference runs transformers' own generate: optimizers do not apply to it"
        import importlib.util

        missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
        return f"the transformers reference needs {', '.join(missing)}" if missing else None
    try:
        backend = registry.backend(cell.backend)
        for name in cell.optimizers:
            registry.optimizer(name)
        backend.check()
    except SKIP_ERRORS as exc:
        return str(exc)
    return None


class CellSession:
    """A loaded pipeline for one cell. ``speak()`` runs one measured utterance and returns the Turn."""

    def __init__(self, cell: Cell, options: RunOptions, plugins):
        from csm_core.pipeline import Pipeline

        self.cell, self.options = cell, options
        self.pipeline = Pipeline(cell_settings(cell, options), plugins)
        try:
            self.pipeline.require("tts")
            started = time.perf_counter()
            self.pipeline.stage("tts")
            self.load_seconds = time.perf_counter() - started
        except BaseException:
            self.pipeline.close()
            raise

    @property
    def settings(self):
        """The settings in effect: the cell's, with the optimizers' overrides applied."""
        return self.pipeline.settings

    @property
    def precision(self) -> dict[str, str]:
        """The CSM's precision plan: ``{"backbone", "decoder", "heads"}`` (heads and embeddings stay fp32)."""
        settings = self.settings
        return {"backbone": settings.precision_of("backbone"), "decoder": settings.precision_of("decoder"),
                "heads": "fp32"}

    def speak(self):
        """One utterance of the benchmark text, without conversation context -> :class:`Turn`."""
        return self.pipeline.speak(self.options.text, context=())

    def close(self) -> None:
        self.pipeline.close()

    def __enter__(self) -> "CellSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
