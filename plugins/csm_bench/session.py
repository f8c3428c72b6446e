"""One benchmark cell made ready to run: its settings, the checks that skip it, and the loaded pipeline.

A cell runs the way ``csmctl say`` does — a :class:`~csm_core.pipeline.Pipeline` from
:class:`~csm_core.config.Settings` — so optimizers act through the same ``configure`` overrides and
hooks as in real use. Generation is greedy with a fixed seed and frame count, and the silence guard's
patience is set to the frame count (the first frame is never silent, so it cannot fire): every backend
and optimizer set does the same number of frames unless the model emits the end-of-speech frame, and
the measured frame count is what the rates are computed from.

With ``utterances`` N > 1 a measured unit is N utterances (:func:`utterance_texts`) spoken through
:func:`csm_core.utterances.speak_many` — in batches when the cell lists ``batched-generation``, one by
one otherwise — and :meth:`CellSession.measure` returns them as one :class:`Unit`. With N = 1 it is
the single :meth:`CellSession.speak` turn, exactly as before utterances existed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csm_bench.matrix import REFERENCE_BACKEND, Cell
from csm_core.errors import CsmError

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
    utterances: int = 1  # utterances per measured unit (speak_many); 1: one Pipeline.speak turn

    def __post_init__(self) -> None:
        for name, low in (("frames", 1), ("repeats", 1), ("warmup", 0), ("utterances", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CsmError(f"--{name}={value!r}: must be an integer >= {low}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise CsmError(f"--threads={self.threads!r}: must be an integer >= 1 (leave it out for the default)")
        if self.bandwidth_gbs is not None and not self.bandwidth_gbs > 0:
            raise CsmError(f"--bandwidth-gbs={self.bandwidth_gbs!r}: must be > 0 (GB/s), or leave it out to measure")
        if not self.text.strip():
            raise CsmError("--text is empty: give a sentence to speak")


def utterance_texts(text: str, utterances: int) -> list[str]:
    """The ``utterances`` texts of a unit: ``text``, then ``text`` with a growing numeral suffix.

    ``utterance_texts("Hi.", 3) == ["Hi.", "Hi. 1", "Hi. 1 2"]``: every prompt has a different length,
    so the rows of a batch end at different frames, as real ones do.
    """
    return [text] + [f"{text} {' '.join(str(k) for k in range(1, i + 1))}" for i in range(1, utterances)]


@dataclass
class Unit:
    """One measured unit of N utterances, shaped like a :class:`~csm_core.pipeline.Turn` for the runner.

    - ``turns``: the :class:`~csm_core.utterances.SpokenTurn` of each text, in order;
    - ``metrics``: ``frames`` and ``audio_seconds`` summed over the turns; ``generation_seconds`` the wall
      seconds of the whole ``speak_many`` call; ``time_to_first_audio_s`` from the call's start to the
      unit's first audio chunk (whichever turn gave it); ``stages`` each distinct stage timing once (a
      batch's tts timing is shared by its rows); ``events`` the turns' events, each once;
    - ``reply_codes`` [K, sum of frames]: the turns' codes concatenated in order; ``audio``: their samples
      concatenated in order;
    - ``paths``: each turn's ``path`` (``batched`` / ``sequential``); ``batch_sizes``: each turn's rows.
    """

    turns: list
    metrics: Any
    reply_codes: Any
    audio: Any
    paths: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, turns: list, started: float, seconds: float) -> "Unit":
        """Aggregate ``turns`` spoken by one call that began at ``perf_counter()`` ``started``, lasting ``seconds``."""
        import numpy as np

        from csm_core.audio import Audio
        from csm_core.metrics import TurnMetrics

        firsts = [t.started + t.metrics.time_to_first_audio_s - started
                  for t in turns if t.metrics.time_to_first_audio_s is not None]
        stages = list({id(timing): timing for t in turns for timing in t.metrics.stages}.values())
        metrics = TurnMetrics(
            stages=stages, time_to_first_audio_s=min(firsts) if firsts else None,
            audio_seconds=sum(t.metrics.audio_seconds for t in turns), generation_seconds=seconds,
            frames=sum(t.metrics.frames for t in turns),
            events=list(dict.fromkeys(event for t in turns for event in t.metrics.events)),
        )
        codes = [t.reply_codes for t in turns if t.reply_codes is not None]
        audios = [t.audio for t in turns if t.audio is not None]
        audio = Audio(np.concatenate([a.samples for a in audios]), audios[0].sample_rate) if audios else None
        return cls(turns=turns, metrics=metrics, reply_codes=np.concatenate(codes, axis=1) if codes else None,
                   audio=audio, paths=[t.path for t in turns], batch_sizes=[t.batch_size for t in turns])


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
    overrides.update(cell.option_overrides)
    settings = load_settings(options.config, overrides)  # CSM_* variables apply; CSM_BENCH_* are not settings
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
    """A loaded pipeline for one cell. ``measure()`` runs one measured unit; ``speak()`` one utterance."""

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
        """The CSM's precision plan: ``{"backbone", "decoder", "heads"}`` (heads and embeddings stay fp32); a
        weight-quantized part is named by its weight format (``int4-g128``, :func:`~csm_bench.floor.weight_format`)."""
        from csm_bench.floor import weight_format

        settings = self.settings
        plan = {"backbone": settings.precision_of("backbone"), "decoder": settings.precision_of("decoder"),
                "heads": "fp32"}
        for part in ("backbone", "decoder"):
            quantization = settings.weight_quantization_of(part)
            if quantization is not None:
                plan[part] = weight_format(quantization.bits, quantization.block_size)
        return plan

    def speak(self):
        """One utterance of the benchmark text, without conversation context -> :class:`Turn`."""
        return self.pipeline.speak(self.options.text, context=())

    def measure(self):
        """One measured unit: the :meth:`speak` Turn when ``utterances`` is 1, else a :class:`Unit` of
        :func:`utterance_texts` spoken by :func:`~csm_core.utterances.speak_many` without context."""
        if self.options.utterances == 1:
            return self.speak()
        from csm_core.utterances import speak_many

        texts = utterance_texts(self.options.text, self.options.utterances)
        started = time.perf_counter()
        turns = speak_many(self.pipeline, texts, context=())
        return Unit.of(turns, started, time.perf_counter() - started)

    def close(self) -> None:
        self.pipeline.close()

    def __enter__(self) -> "CellSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
