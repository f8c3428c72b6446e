"""The ``speech_to_text`` engine of the onnxruntime backend (Whisper's encoder, cross-attention and
decoder-with-cache graphs in real ``onnxruntime.InferenceSession``s on the CPU) against the PyTorch engine.

The model is the random tiny Whisper of :mod:`csm_listen.tiny_models` with wider weights (varied greedy
text, sometimes an early end token). Greedy ids must be identical to the PyTorch engine's on every clip;
encoder output and logits within 1e-4; and the ``whisper`` stage of a pipeline with ``--backend
onnxruntime`` must run there (its StageTiming says so) and give the pytorch backend's transcript.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_core.components import SpeechToText, SpeechToTextEngine
from csm_core.generation.speech_decoding import decode_speech, whisper_decoding

pytestmark = pytest.mark.slow  # exports three tiny graphs once (~8 s on 2 cores)

MAX_NEW = 24


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    from whisper_models import varied_whisper

    return varied_whisper(tmp_path_factory.mktemp("ort-stt") / "varied-whisper")


@pytest.fixture(scope="module")
def loaded(whisper_dir):
    from whisper_models import load_whisper

    return load_whisper(whisper_dir)


@pytest.fixture(scope="module")
def engines(loaded, onnx_cache):
    from ort_helpers import make_context

    from csm_onnxruntime.speech_to_text import OnnxSpeechToText
    from csm_pytorch.speech_to_text import TorchSpeechToText

    _, model = loaded
    context = make_context(onnx_cache)
    component = SpeechToText(model, model.config.max_target_positions)
    return OnnxSpeechToText(component, context), TorchSpeechToText(component), context


def features(processor, seed: int) -> torch.Tensor:
    pcm = (0.1 * np.random.default_rng(seed).standard_normal(16000 + 8000 * seed)).astype(np.float32)
    return processor.feature_extractor(pcm, sampling_rate=16000, return_tensors="pt").input_features


def test_greedy_ids_equal_the_pytorch_engine(loaded, engines):
    processor, model = loaded
    ort, reference, context = engines
    assert isinstance(ort, SpeechToTextEngine)
    assert [e.split(" to ")[0] for e in context.events] == [
        f"onnxruntime: exporting {g}" for g in ("whisper_encoder", "whisper_cross_kv", "whisper_decoder")]
    assert all(s.get_providers() == ["CPUExecutionProvider"] for s in ort.sessions.values())
    from whisper_models import two_decodings

    decodings = two_decodings(model)
    lengths = set()
    for decoding in decodings:
        for seed in range(3):
            feats = features(processor, seed)
            ours = decode_speech(ort, feats, decoding, MAX_NEW)
            assert ours == decode_speech(reference, feats, decoding, MAX_NEW), seed
            lengths.add(len(ours.tokens))
    assert len(lengths) > 1 and max(lengths) > 5


def test_encoder_and_logits_match_pytorch(loaded, engines):
    processor, model = loaded
    ort, reference, _ = engines
    feats = features(processor, 4)
    hidden = reference.encode(feats)
    torch.testing.assert_close(ort.encode(feats), hidden, atol=1e-4, rtol=0)
    decoding = whisper_decoding(model.generation_config, task="transcribe", language="en")
    tokens = decode_speech(reference, feats, decoding, 12).tokens
    ort.reset(hidden), reference.reset(hidden)
    prompt = torch.tensor([decoding.prompt])
    torch.testing.assert_close(ort.prefill(prompt), reference.prefill(prompt), atol=1e-4, rtol=0)
    for token in tokens:
        t = torch.tensor([[token]])
        torch.testing.assert_close(ort.step(t), reference.step(t), atol=1e-4, rtol=0)
    assert ort.position == reference.position == len(decoding.prompt) + len(tokens)


def test_the_transcriber_stage_runs_on_onnxruntime_with_the_same_transcript(whisper_dir, onnx_cache):
    import csm_listen.plugin as listen_plugin
    import csm_model.plugin as model_plugin
    import csm_onnxruntime.plugin as ort_plugin
    import csm_pytorch.plugin as torch_plugin
    from csm_core.audio import Audio
    from csm_core.config import Settings
    from csm_core.pipeline import Pipeline
    from csm_core.plugins import Plugins
    from csm_core.turn import Turn
    from csm_onnxruntime.speech_to_text import OnnxSpeechToText
    from csm_pytorch.speech_to_text import TorchSpeechToText

    plugins = Plugins()
    for module, name in ((model_plugin, "model"), (torch_plugin, "pytorch"), (ort_plugin, "onnxruntime"),
                         (listen_plugin, "listen")):
        plugins.register(module, name=name)
    clip = Audio((0.1 * np.random.default_rng(7).standard_normal(24000)).astype(np.float32), 16000)

    def transcribe(backend: str):
        settings = Settings(backend=backend, device="cpu", models={"asr": str(whisper_dir)}, cache_dir=onnx_cache,
                            options={"whisper": {"max_new_tokens": MAX_NEW}})
        pipeline = Pipeline(settings, plugins=plugins)
        turn = Turn()
        # the pipeline's own stage run (what a turn does for the transcriber), timed into turn.metrics
        text = pipeline._run("transcriber", turn, lambda stage: stage.transcribe(clip))
        return pipeline.stage("transcriber"), text, turn.metrics.stages

    on_ort, text_ort, timings_ort = transcribe("onnxruntime")
    on_torch, text_torch, timings_torch = transcribe("pytorch")
    assert isinstance(on_ort.engine, OnnxSpeechToText) and isinstance(on_torch.engine, TorchSpeechToText)
    assert [(t.stage, t.backend) for t in timings_ort] == [("transcriber", "onnxruntime")]
    assert [(t.stage, t.backend) for t in timings_torch] == [("transcriber", "pytorch")]
    assert text_ort == text_torch and text_ort
