"""The TensorRT ``causal_lm`` and ``speech_to_text`` engines built and run for real: greedy ids equal to the
PyTorch engines on the random tiny models, with and without CUDA-graph replay of the one-token step.
Needs TensorRT and a CUDA GPU (skipped elsewhere, saying which is missing); what holds without them (the
specs, the shared graphs, the profiles) is tested in ``test_listen_graphs.py``."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from csm_core.components import CausalLm, CausalLmEngine, SpeechToText, SpeechToTextEngine
from csm_core.generation.lm_decoding import decode_tokens
from csm_core.generation.speech_decoding import decode_speech

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

PROMPT = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11]
MAX_NEW = 24


@pytest.fixture
def trt_gpu():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: pip install 'csm-multi[tensorrt]'")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: torch.cuda.is_available() is False")
    pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, to export the graphs) is not installed")
    return trt


def gpu_context(cache_dir, stage: str, **tensorrt):
    from csm_core.config import Settings
    from csm_core.records import StageContext

    settings = Settings(backend="tensorrt", device="cuda", cache_dir=cache_dir, precision="fp32",
                        options={"tensorrt": {"workspace_gib": 1.0, **tensorrt}})
    return StageContext(stage=stage, settings=settings, registry=None, log=logging.getLogger("csm.test"))


def test_causal_lm_gives_the_greedy_ids_and_logits_of_pytorch(trt_gpu, lm, tmp_path):
    from csm_pytorch.causal_lm import TorchCausalLm
    from csm_tensorrt.causal_lm import causal_lm_engine

    context = gpu_context(tmp_path, "llm")
    engine = causal_lm_engine(CausalLm(copy.deepcopy(lm).cuda(), 128), context)
    assert isinstance(engine, CausalLmEngine)
    assert any("building the causal_lm engine" in event for event in context.events)
    reference = TorchCausalLm(CausalLm(lm, 128))
    ours = decode_tokens(engine, PROMPT, 48)
    assert ours == decode_tokens(reference, PROMPT, 48) and len(set(ours)) > 5
    engine.reset(), reference.reset()
    prompt = torch.tensor([PROMPT])
    torch.testing.assert_close(engine.prefill(prompt).cpu(), reference.prefill(prompt), atol=1e-2, rtol=0)
    for token in ours[:16]:
        t = torch.tensor([[token]])
        torch.testing.assert_close(engine.step(t).cpu(), reference.step(t), atol=1e-2, rtol=0)


def test_causal_lm_answers_are_the_same_with_and_without_cuda_graphs(trt_gpu, lm, tmp_path):
    """Several answers in turn: each prompt runs eagerly after captured steps, which are captured again."""
    from csm_tensorrt.causal_lm import causal_lm_engine

    cuda_lm = copy.deepcopy(lm).cuda()
    graphed = causal_lm_engine(CausalLm(cuda_lm, 128), gpu_context(tmp_path, "llm", cuda_graphs=True))
    eager_context = gpu_context(tmp_path, "llm", cuda_graphs=False)
    eager = causal_lm_engine(CausalLm(cuda_lm, 128), eager_context)
    assert not any("building" in event for event in eager_context.events)  # the cached engine, reused
    for prompt in (PROMPT, PROMPT[:3], PROMPT[::-1], [PROMPT[0]]):
        assert decode_tokens(graphed, prompt, 32) == decode_tokens(eager, prompt, 32), prompt


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_speech_to_text_gives_the_greedy_ids_of_pytorch(trt_gpu, tmp_path, cuda_graphs):
    from whisper_models import load_whisper, two_decodings, varied_whisper

    from csm_pytorch.speech_to_text import TorchSpeechToText
    from csm_tensorrt.speech_to_text import speech_to_text_engine

    directory = varied_whisper(tmp_path / "varied-whisper")
    processor, model = load_whisper(directory)
    positions = model.config.max_target_positions
    context = gpu_context(tmp_path / "cache", "transcriber", cuda_graphs=cuda_graphs)
    engine = speech_to_text_engine(SpeechToText(copy.deepcopy(model).cuda(), positions), context)
    assert isinstance(engine, SpeechToTextEngine)
    reference = TorchSpeechToText(SpeechToText(model, positions))
    decodings = two_decodings(model)
    lengths = set()
    for decoding in decodings:
        for seed in range(3):
            pcm = (0.1 * np.random.default_rng(seed).standard_normal(16000 + 8000 * seed)).astype(np.float32)
            features = processor.feature_extractor(pcm, sampling_rate=16000, return_tensors="pt").input_features
            ours = decode_speech(engine, features, decoding, MAX_NEW)
            assert ours == decode_speech(reference, features, decoding, MAX_NEW), seed
            lengths.add(len(ours.tokens))
    assert len(lengths) > 1
