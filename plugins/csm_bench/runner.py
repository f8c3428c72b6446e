"""Runs benchmark cells and measures them; keeps each baseline's output to judge the optimized cells.

Per cell: load (timed), ``warmup`` unmeasured units, then ``repeats`` measured ones. A unit is one
utterance, or with ``--utterances N`` N utterances spoken by ``speak_many`` (batched in the
``batched-generation`` cell, one by one in the others; :meth:`CellSession.measure`): its frames and
audio are the N turns' together, its seconds the wall seconds of the whole call, its first audio the
first chunk any of its turns gave, its codes and audio the turns' concatenated in order. Figures use
the median repeat:

- ``frames_per_second``: frames generated / seconds of the TTS stage (CSM + Mimi decode of every frame)
- ``real_time_factor``: those seconds / seconds of audio produced (below 1 is faster than real time)
- ``time_to_first_audio_s``: from the start of the unit to the first decoded 80 ms chunk
- ``speak_paths`` / ``batch_sizes`` (``--utterances`` > 1 only): each utterance's ``speak_many`` path
  (``batched`` / ``sequential``) and the rows generated with it, in the first measured unit
- ``stage_seconds``: per-stage seconds from the turn's metrics
- ``peak_rss_bytes`` / ``peak_device_bytes``: see :mod:`csm_bench.memory`
- ``x_floor``: measured seconds per frame / the physical floor's (:mod:`csm_bench.floor`)

The first measured unit of the baseline cell (optimizers ``none``) of each backend x preset is
kept; every optimized cell of that backend x preset is compared with it by
:func:`csm_core.quality.compare_runs` (codes and audio). ``repeat_code_agreement`` compares each cell's
repeats with its own first one: below 1.0 the run is not reproducible and no quality claim holds.

Speed-ups are paired: the baseline cell's pipeline stays loaded while the optimized cells of its
backend x preset run, and each measured repeat speaks once with each, in ABBA order
(``paired_speedup`` = median of baseline seconds / optimized seconds, per unit). On a machine whose load drifts
(shared CI cores) this cancels what unpaired rates measured minutes apart cannot. Each pipeline gets
its own plugin manager, so one cell's optimizer hooks never act on another cell's pipeline.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from csm_bench.floor import floor_for, measure_bandwidth
from csm_bench.matrix import REFERENCE_BACKEND, Cell
from csm_bench.memory import PeakMemory
from csm_bench.session import SKIP_ERRORS, CellSession, RunOptions, skip_reason
from csm_core.quality import code_agreement, compare_runs

if TYPE_CHECKING:
    from csm_core.plugins import Plugins

log = logging.getLogger("csm.bench")
FRAME_SECONDS = 0.08  # one CSM / Mimi frame


@dataclass
class CellResult:
    """What one cell gave: ``status`` is ``ok``, ``skipped`` (with ``reason``) or ``error`` (with ``reason``)."""

    cell: Cell
    status: str
    reason: str | None = None
    precision: str | None = None
    effects: dict[str, str] = field(default_factory=dict)  # optimizer -> exact | approximate
    figures: dict = field(default_factory=dict)
    floor: dict | None = None
    quality: dict | None = None
    events: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "id": self.cell.id, "preset": self.cell.preset, "backend": self.cell.backend,
            "optimizers": list(self.cell.optimizers), "label": self.cell.optimizer_label,
            "options": self.cell.option_overrides, "status": self.status, "reason": self.reason,
            "precision": self.precision, "effects": self.effects, "figures": self.figures,
            "floor": self.floor, "quality": self.quality, "events": self.events,
        }


@dataclass
class Output:
    """The codes [K, F] and audio samples of one utterance (or unit: its utterances concatenated)."""

    codes: np.ndarray
    audio: np.ndarray | None

    @classmethod
    def of(cls, turn) -> "Output":
        """The codes and audio of a pipeline :class:`~csm_core.pipeline.Turn` or a bench ``Unit``."""
        return cls(turn.reply_codes, None if turn.audio is None else turn.audio.samples)


def quality_against(baseline: Output, output: Output, versus: str) -> dict:
    """:func:`compare_runs` of ``output`` against ``baseline`` as a dict, naming the baseline cell."""
    report = compare_runs(baseline.codes, output.codes, baseline.audio, output.audio)
    return {**report.to_dict(), "versus": versus}


def turn_figures(turns) -> dict:
    """Frames, rates and per-stage seconds of measured turns or units (the median; see the module docstring)."""
    metrics = [turn.metrics for turn in turns]
    seconds = [m.generation_seconds for m in metrics]
    frames = metrics[0].frames
    median = statistics.median(seconds)
    stage_names = dict.fromkeys(t.stage for m in metrics for t in m.stages)
    return {
        "frames": frames,
        "generation_seconds": seconds,
        "frames_per_second": frames / median if median else None,
        "real_time_factor": median / metrics[0].audio_seconds if metrics[0].audio_seconds else None,
        "time_to_first_audio_s": _median([m.time_to_first_audio_s for m in metrics]),
        "stage_seconds": {name: _median([sum(t.seconds for t in m.stages if t.stage == name) for m in metrics])
                          for name in stage_names},
    }


class MatrixRunner:
    """Runs cells one after another, sharing plugins, the bandwidth probe and the baselines' outputs."""

    def __init__(self, options: RunOptions, plugins_factory: Callable[[], "Plugins"] | None = None):
        from csm_core.plugins import Plugins
        from csm_core.registry import Registry

        self.options = options
        self.new_plugins = plugins_factory if plugins_factory is not None else Plugins.from_environment
        self.registry = Registry.collect(self.new_plugins())
        self.baselines: dict[tuple[str, str], Output] = {}
        self._baseline_sessions: dict[tuple[str, str], CellSession] = {}
        self._bandwidth: dict[str, tuple[float, str]] = {}
        if options.threads is not None:
            import torch

            torch.set_num_threads(options.threads)

    def close(self) -> None:
        """Unload the baseline pipelines kept for pairing."""
        for session in self._baseline_sessions.values():
            session.close()
        self._baseline_sessions.clear()

    def bandwidth(self, device: str) -> tuple[float, str]:
        """(bytes/s, source) for ``device``: ``--bandwidth-gbs`` when given, else measured once."""
        if self.options.bandwidth_gbs is not None:
            return self.options.bandwidth_gbs * 1e9, "given (--bandwidth-gbs)"
        kind = "cuda" if device.startswith("cuda") else "cpu"
        if kind not in self._bandwidth:
            self._bandwidth[kind] = measure_bandwidth(device)
        return self._bandwidth[kind]

    def run(self, cell: Cell) -> CellResult:
        """Run ``cell``; a cell that cannot run here is skipped, one that fails is an error, with the reason."""
        reason = skip_reason(cell, self.registry)
        if reason is not None:
            return CellResult(cell, "skipped", reason)
        effects = {name: self.registry.optimizer(name).effect for name in cell.optimizers}
        try:
            if cell.backend == REFERENCE_BACKEND:
                result = self._run_reference(cell)
            else:
                result = self._run_pipeline(cell)
        except SKIP_ERRORS as exc:
            return CellResult(cell, "skipped", str(exc), effects=effects)
        except Exception as exc:  # one broken cell must not hide the others: recorded and shown
            log.exception("benchmark cell %s failed", cell.id)
            return CellResult(cell, "error", f"{type(exc).__name__}: {exc}", effects=effects)
        result.effects = effects
        return result

    # -- the pipeline cells ---------------------------------------------------------------------
    def _run_pipeline(self, cell: Cell) -> CellResult:
        from csm_model.presets import get_preset

        options, key = self.options, (cell.preset, cell.backend)
        if cell.is_baseline:
            self.close()  # the previous group's baseline is no longer needed
        partner = self._baseline_sessions.get(key)
        paired: list[float] = []
        with PeakMemory() as peak:
            session = CellSession(cell, options, self.new_plugins())
            try:
                for _ in range(options.warmup):
                    session.measure()
                turns = []  # a Turn per repeat, or a Unit of `utterances` turns
                for repeat in range(options.repeats):
                    if partner is None:
                        turns.append(session.measure())
                        continue
                    if repeat % 2 == 0:  # ABBA: a load trend hits both sides alike
                        base, turn = partner.measure(), session.measure()
                    else:
                        turn, base = session.measure(), partner.measure()
                    turns.append(turn)
                    paired.append(base.metrics.generation_seconds / turn.metrics.generation_seconds)
                precision, device = session.precision, _tts_device(session)
            except BaseException:
                session.close()
                raise
        if cell.is_baseline:
            self._baseline_sessions[key] = session  # kept loaded to pair the optimized cells with
        else:
            session.close()
        figures = {**turn_figures(turns), "load_seconds": session.load_seconds, "peak_rss_bytes": peak.host_bytes,
                   "added_rss_bytes": peak.added_host_bytes, "peak_rss_source": peak.host_source,
                   "peak_device_bytes": peak.device_bytes, "device": device,
                   "paired_speedup": statistics.median(paired) if paired else None, "paired_ratios": paired}
        if options.utterances > 1:
            figures["speak_paths"], figures["batch_sizes"] = turns[0].paths, turns[0].batch_sizes
        outputs = [Output.of(turn) for turn in turns]
        figures["repeat_code_agreement"] = min(code_agreement(outputs[0].codes, o.codes) for o in outputs)
        floor = floor_for(get_preset(cell.preset).args, precision, *self.bandwidth(device))
        figures["x_floor"] = floor.multiple(figures["frames_per_second"])
        events = sorted({event for turn in turns for event in turn.metrics.events})
        expected = options.frames * options.utterances
        if figures["frames"] != expected:
            events.append(f"generated {figures['frames']} of {expected} frames (end of speech): "
                          "rates are per frame generated")
        return CellResult(cell, "ok", precision=floor.precision, figures=figures, floor=floor.to_dict(),
                          quality=self._quality(cell, outputs[0]), events=events)

    def _quality(self, cell: Cell, output: Output) -> dict | None:
        key = (cell.preset, cell.backend)
        if cell.is_baseline:
            self.baselines[key] = output
            return None
        baseline = self.baselines.get(key)
        if baseline is None:
            return {"note": f"no quality: baseline cell {cell.baseline().id} did not run "
                            "(put 'none' in --optimizers, and see its row)"}
        return quality_against(baseline, output, cell.baseline().id)

    # -- the reference row ----------------------------------------------------------------------
    def _run_reference(self, cell: Cell) -> CellResult:
        from csm_bench.reference import ReferenceSession
        from csm_model.presets import get_preset

        from csm_bench.session import cell_settings
        from csm_core.devices import resolve_device

        options = self.options
        settings = cell_settings(cell, options)  # the device the pipeline cells resolve, from flags or config
        device = resolve_device(settings.device, settings.allow_fallback, log.info)
        with PeakMemory() as peak:
            session = ReferenceSession(cell.preset, options.text, options.frames, device=device)
            for _ in range(options.warmup):
                session.generate()
            runs = [session.generate() for _ in range(options.repeats)]
            session.close()
        seconds = [s for _, s in runs]
        frames = int(runs[0][0].shape[-1])
        median = statistics.median(seconds)
        figures = {
            "frames": frames,
            "generation_seconds": seconds,
            "frames_per_second": frames / median if median else None,
            "real_time_factor": median / (frames * FRAME_SECONDS) if frames else None,
            "time_to_first_audio_s": None,  # generate() returns all frames at once and decodes no audio
            "stage_seconds": {},
            "load_seconds": session.load_seconds,
            "peak_rss_bytes": peak.host_bytes,
            "added_rss_bytes": peak.added_host_bytes,
            "peak_rss_source": peak.host_source,
            "peak_device_bytes": peak.device_bytes,
            "device": device,
            "repeat_code_agreement": min(code_agreement(runs[0][0].numpy(), c.numpy()) for c, _ in runs),
        }
        floor = floor_for(get_preset(cell.preset).args, "fp32", *self.bandwidth(device))
        figures["x_floor"] = floor.multiple(figures["frames_per_second"])
        events = ["codes only: transformers' generate, no Mimi decode"]
        if options.utterances > 1:
            events.append(f"one utterance per run: --utterances {options.utterances} applies to pipeline cells")
        return CellResult(cell, "ok", precision="fp32", figures=figures, floor=floor.to_dict(), events=events)


def run_matrix(cells: list[Cell], options: RunOptions, plugins_factory: Callable[[], "Plugins"] | None = None,
               on_cell: Callable[[Cell, CellResult | None], None] | None = None) -> list[CellResult]:
    """Run every cell in order; ``on_cell(cell, None)`` before and ``on_cell(cell, result)`` after each.

    ``plugins_factory()`` makes the plugin manager of each pipeline (default: the installed plugins).
    """
    runner = MatrixRunner(options, plugins_factory)
    results = []
    try:
        for cell in cells:
            if on_cell is not None:
                on_cell(cell, None)
            result = runner.run(cell)
            results.append(result)
            if on_cell is not None:
                on_cell(cell, result)
    finally:
        runner.close()
    return results


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _tts_device(session: CellSession) -> str:
    speaker = session.pipeline.stage("tts")
    return str(getattr(speaker, "device", "cpu"))
