"""Whole-utterance generation on the same weights: transformers' reference, our PyTorch backend, and
our ONNX Runtime backend (the same frame loop driving ONNX Runtime sessions).

Both run greedy for exactly ``BENCH_FRAMES`` frames (no end-of-speech: random weights never emit the
all-zero frame, and our silence guard is off), so they do identical work. Compare with
``python -m benchmarks.report .benchmarks/<run>.json``.
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import BENCH_FRAMES, BENCH_PRESET, PROMPT_TEXT, record_rate

pytestmark = pytest.mark.benchmark(group="generate", min_rounds=3, warmup=False)


def bench_frame_loop(benchmark, engines, model, prompt) -> None:
    """Time the core's frame loop driving ``engines`` greedily for exactly BENCH_FRAMES frames."""
    from csm_core.generation import FrameEmbedder, SamplingParams, generate_codes

    embedder = FrameEmbedder.from_model(model)

    def run():
        return generate_codes(engines, embedder, prompt, max_frames=BENCH_FRAMES,
                              sampling=SamplingParams(temperature=0.0), silence_guard=None)

    codes = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert codes.shape[-1] == BENCH_FRAMES
    record_rate(benchmark, BENCH_FRAMES)


def test_generate_csm_multi_pytorch(benchmark, preset_model, prompt):
    from csm_pytorch.engines import TorchCsmEngines

    _, model, _ = preset_model
    bench_frame_loop(benchmark, TorchCsmEngines(model), model, prompt)


def test_generate_transformers_reference(benchmark, preset_model):
    """The reference row: transformers' ``CsmForConditionalGeneration.generate`` on the same weights."""
    from csm_bench.reference import ReferenceSession

    reference = ReferenceSession(BENCH_PRESET, PROMPT_TEXT, BENCH_FRAMES)
    codes, _ = benchmark.pedantic(reference.generate, rounds=3, warmup_rounds=1)
    assert codes.shape[-1] == BENCH_FRAMES
    record_rate(benchmark, BENCH_FRAMES)


def test_generate_csm_multi_onnxruntime(benchmark, preset_model, prompt, matrix_runner):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import logging

    from csm_bench.matrix import Cell
    from csm_bench.session import cell_settings
    from csm_core.records import StageContext
    from csm_onnxruntime.engines import OnnxCsmEngines

    _, model, _ = preset_model
    # The whole-turn cells' settings (and cache): the graphs are exported once per weights.
    settings = cell_settings(Cell(BENCH_PRESET, "onnxruntime"), matrix_runner.options)
    context = StageContext(stage="tts", settings=settings, registry=None, log=logging.getLogger("csm.bench"))
    bench_frame_loop(benchmark, OnnxCsmEngines(model, context), model, prompt)
