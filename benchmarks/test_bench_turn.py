"""Whole-turn benchmarks: the ``csm`` TTS stage through a Pipeline, over backend x optimizer set x preset.

The same cells and measurements as ``csmctl bench`` (:mod:`csm_bench`): each round speaks the
benchmark sentence greedily for ``CSM_BENCH_FRAMES`` frames, CSM and Mimi decoding included. Cells come
from ``CSM_BENCH_BACKENDS`` x ``CSM_BENCH_OPTIMIZERS`` x ``CSM_BENCH_PRESETS`` (see conftest); one that
cannot run here is skipped with the reason. ``extra_info`` holds frames/s, real-time factor, time to
first audio, per-stage seconds, peak memory, the multiple of the physical floor and, for optimized
cells, the quality against the ``none`` cell of the same backend and preset (when it ran first).

    pytest benchmarks/ --benchmark-only --benchmark-json bench.json && python -m benchmarks.report bench.json
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import BENCH_BACKENDS, BENCH_OPTIMIZERS, BENCH_PRESETS
from csm_bench.matrix import REFERENCE_BACKEND, parse_matrix
from csm_bench.runner import Output, quality_against, turn_figures
from csm_bench.session import SKIP_ERRORS, CellSession, skip_reason
from csm_model.presets import PRESETS

CELLS = parse_matrix(BENCH_BACKENDS, BENCH_OPTIMIZERS, BENCH_PRESETS, PRESETS)


@pytest.mark.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
def test_whole_turn(benchmark, matrix_runner, cell):
    from csm_bench.floor import floor_for
    from csm_bench.memory import PeakMemory
    from csm_model.presets import get_preset

    benchmark.group = f"whole-turn {cell.preset}"
    if cell.backend == REFERENCE_BACKEND:
        pytest.skip("the reference row is test_generate_transformers_reference (group 'generate')")
    reason = skip_reason(cell, matrix_runner.registry)
    if reason is not None:
        pytest.skip(reason)
    options = matrix_runner.options
    turns = []
    with PeakMemory() as peak:
        try:
            session = CellSession(cell, options, matrix_runner.new_plugins())
        except SKIP_ERRORS as exc:
            pytest.skip(str(exc))
        with session:
            benchmark.pedantic(lambda: turns.append(session.speak()), rounds=options.repeats,
                               warmup_rounds=options.warmup)
            precision, device = session.precision, str(session.pipeline.stage("tts").device)
    measured = turns[options.warmup:]
    figures = turn_figures(measured)
    assert figures["frames"] == options.frames  # random weights never end early: every cell does the same work
    figures["frames_per_second"] = figures["frames"] / benchmark.stats.stats.mean
    figures["real_time_factor"] = benchmark.stats.stats.mean / measured[0].metrics.audio_seconds
    floor = floor_for(get_preset(cell.preset).args, precision, *matrix_runner.bandwidth(device))
    output = Output.of(measured[0])
    key = (cell.preset, cell.backend)
    quality = None
    if cell.is_baseline:
        matrix_runner.baselines[key] = output
    elif key in matrix_runner.baselines:
        quality = quality_against(matrix_runner.baselines[key], output, cell.baseline().id)
    benchmark.extra_info.update(
        cell=cell.id, backend=cell.backend, optimizers=list(cell.optimizers), preset=cell.preset,
        precision=precision, **{k: v for k, v in figures.items() if k != "generation_seconds"},
        load_seconds=session.load_seconds, peak_rss_bytes=peak.host_bytes, peak_device_bytes=peak.device_bytes,
        floor_frames_per_second=floor.frames_per_second, x_floor=floor.multiple(figures["frames_per_second"]),
        floor_bandwidth_source=floor.bandwidth_source, quality=quality,
        effects={name: matrix_runner.registry.optimizer(name).effect for name in cell.optimizers},
    )
