"""Shared pieces of the benchmarks: the models under test, built once per session, and the matrix.

Environment (all optional):

- ``CSM_BENCH_PRESET``: the preset of the component benchmarks (default ``small``);
  ``CSM_BENCH_PRESETS``: comma-separated presets of the whole-turn matrix (default: ``CSM_BENCH_PRESET``)
- ``CSM_BENCH_BACKENDS``: backends of the whole-turn matrix (default ``pytorch,onnxruntime``)
- ``CSM_BENCH_OPTIMIZERS``: optimizer sets, ``none``/``name``/``a+b`` (default ``none``)
- ``CSM_BENCH_FRAMES`` (default 24), ``CSM_BENCH_THREADS`` (default torch's),
  ``CSM_BENCH_BANDWIDTH_GBS`` (memory bandwidth for the floor; measured when unset)
"""

from __future__ import annotations

import os

import pytest

from csm_bench.session import DEFAULT_TEXT

torch = pytest.importorskip("torch", reason="the benchmarks need the torch extra")

BENCH_PRESET = os.environ.get("CSM_BENCH_PRESET", "small")
BENCH_FRAMES = int(os.environ.get("CSM_BENCH_FRAMES", "24"))  # 24 frames = 1.92 s of audio
BENCH_THREADS = int(os.environ.get("CSM_BENCH_THREADS", str(torch.get_num_threads())))
PROMPT_TEXT = DEFAULT_TEXT
BENCH_PRESETS = os.environ.get("CSM_BENCH_PRESETS", BENCH_PRESET)
BENCH_BACKENDS = os.environ.get("CSM_BENCH_BACKENDS", "pytorch,onnxruntime")
BENCH_OPTIMIZERS = os.environ.get("CSM_BENCH_OPTIMIZERS", "none")
_BANDWIDTH = os.environ.get("CSM_BENCH_BANDWIDTH_GBS")
BENCH_BANDWIDTH_GBS = float(_BANDWIDTH) if _BANDWIDTH else None


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(BENCH_THREADS)


@pytest.fixture(scope="session")
def matrix_runner():
    """The harness's runner (plugins, registry, floor bandwidth, baselines' outputs), one per session."""
    from csm_bench.runner import MatrixRunner
    from csm_bench.session import RunOptions

    options = RunOptions(frames=BENCH_FRAMES, repeats=3, warmup=1, threads=BENCH_THREADS,
                         bandwidth_gbs=BENCH_BANDWIDTH_GBS)
    runner = MatrixRunner(options)
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def preset_model():
    """(args, our Csm, its text tokenizer) for the benchmark preset, random weights, seed 0."""
    from csm_model.presets import build_preset

    model, tokenizer = build_preset(BENCH_PRESET, seed=0)
    return model.args, model, tokenizer


@pytest.fixture(scope="session")
def prompt(preset_model):
    from csm_core.generation import build_prompt

    args, _, tokenizer = preset_model
    return build_prompt(
        [], 0, PROMPT_TEXT, tokenizer,
        num_codebooks=args.num_codebooks, max_frames=BENCH_FRAMES, max_positions=args.max_seq_len,
    )


def record_rate(benchmark, frames: int, audio_seconds_per_frame: float = 0.08) -> None:
    """Store frames per second and real-time factor of the mean round in the benchmark's extra_info."""
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        frames=frames,
        frames_per_second=frames / mean,
        real_time_factor=mean / (frames * audio_seconds_per_frame),
        preset=BENCH_PRESET,
        threads=torch.get_num_threads(),
    )
