"""Whole-utterance generation on the same weights: transformers' reference, our PyTorch backend, and
our ONNX Runtime backend (the same frame loop driving ONNX Runtime sessions).

Both run greedy for exactly ``BENCH_FRAMES`` frames (no end-of-speech: random weights never emit the
all-zero frame, and our silence guard is off), so they do identical work. Compare with
``python -m benchmarks.report .benchmarks/<run>.json``.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import BENCH_FRAMES, record_rate

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
    from csm_pytorch.model import TorchCsmEngines

    _, model, _ = preset_model
    bench_frame_loop(benchmark, TorchCsmEngines(model), model, prompt)


def test_generate_transformers_reference(benchmark, preset_model, prompt):
    from transformers import CsmForConditionalGeneration, MimiConfig

    from csm_pytorch import convert

    args, model, _ = preset_model
    codec = MimiConfig(hidden_size=16, num_filters=4, codebook_dim=8, vector_quantization_hidden_dimension=8,
                       upsample_groups=16, num_hidden_layers=1, intermediate_size=16, num_attention_heads=2,
                       num_key_value_heads=2, num_quantizers=args.num_codebooks, codebook_size=64)
    config = convert.transformers_config_from_args(args, codec_config=codec)
    reference = CsmForConditionalGeneration(config).eval()
    state = convert.to_transformers_state_dict(model.state_dict(), args)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and not [name for name in missing if not name.startswith("codec_model.")]
    tokens, mask = prompt.tokens[None], prompt.mask[None]
    with torch.no_grad():
        text = reference.embed_text_tokens(tokens[..., -1])
        audio = reference.backbone_model.embed_tokens(tokens[..., :-1])
        inputs_embeds = torch.where(mask[..., :1], audio, text)

    def run():
        with torch.no_grad():
            return reference.generate(inputs_embeds=inputs_embeds, max_new_tokens=BENCH_FRAMES,
                                      do_sample=False, depth_decoder_do_sample=False)

    codes = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert codes.shape[1] == BENCH_FRAMES
    record_rate(benchmark, BENCH_FRAMES)


def test_generate_csm_multi_onnxruntime(benchmark, preset_model, prompt, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import logging

    from csm_core.config import Settings
    from csm_core.records import StageContext
    from csm_onnxruntime.engines import OnnxCsmEngines

    _, model, _ = preset_model
    settings = Settings(backend="onnxruntime", device="cpu", cache_dir=tmp_path_factory.mktemp("onnx"))
    context = StageContext(stage="tts", settings=settings, registry=None, log=logging.getLogger("csm.bench"))
    bench_frame_loop(benchmark, OnnxCsmEngines(model, context), model, prompt)
