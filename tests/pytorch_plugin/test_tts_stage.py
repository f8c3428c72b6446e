"""The ``csm`` TTS stage on the pytorch backend, through the pipeline and through ``csmctl say``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from csm_core.config import Settings
from csm_core.errors import BackendUnavailable, CsmError
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins
from csm_core.stages import Segment

pytest.importorskip("torch")

CSMCTL = str(Path(sys.executable).parent / "csmctl")


def pipeline(**settings) -> Pipeline:
    settings.setdefault("models", {"preset": "tiny"})
    settings.setdefault("device", "cpu")
    return Pipeline(Settings(**settings), Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch"}))


GREEDY = {"temperature": 0.0, "max_new_frames": 6}


def test_streamed_audio_equals_decoding_all_codes_at_once():
    chunks = []
    with pipeline(generation=GREEDY) as p:
        turn = p.speak("Stream me.", on_audio=chunks.append)
        codec = p.stage("tts").codec
        import torch

        whole = codec.decode(torch.as_tensor(turn.reply_codes)[None])[0, 0].numpy()
    assert len(chunks) == 6 and all(len(c) == 1920 for c in chunks)
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4, rtol=0)
    assert turn.metrics.frames == 6 and turn.audio.sample_rate == 24000


def test_seed_fixes_sampled_speech():
    def codes(seed):
        with pipeline(generation={"max_new_frames": 4, "seed": seed, "temperature": 0.9}) as p:
            return p.speak("Same seed.").reply_codes

    assert np.array_equal(codes(7), codes(7))
    assert not np.array_equal(codes(7), codes(8))


def test_sampled_codes_are_always_decodable():
    with pipeline(generation={"max_new_frames": 8, "seed": 0, "temperature": 1.5, "top_k": 2051}) as p:
        codes = p.speak("Anything goes.").reply_codes
    assert codes.max() < 2048  # CSM scores 2051 codes, Mimi decodes 2048


def test_context_segments_change_the_speech():
    with pipeline(generation=GREEDY) as p:
        plain = p.speak("Hello.", context=()).reply_codes
        earlier = Segment(1, "Earlier words.", np.random.default_rng(0).integers(1, 2048, (32, 4)))
        with_context = p.speak("Hello.", context=(earlier,)).reply_codes
    assert not np.array_equal(plain, with_context)


def test_empty_text_is_an_error():
    with pipeline() as p, pytest.raises(CsmError, match="empty"):
        p.speak("   ")


def test_text_past_the_context_budget_is_a_clear_error():
    with pipeline(generation={"max_new_frames": 10}) as p, pytest.raises(CsmError, match="needs [0-9]+ positions .* context budget is"):
        p.speak("word " * 200)  # the tiny preset has 512 positions


def test_oldest_context_is_trimmed_to_fit_and_never_the_current_text():
    long_ago = Segment(1, "x" * 495, None)  # with the rest, past the tiny preset's 512 positions
    recent = Segment(0, "recent", None)
    with pipeline(generation={**GREEDY, "trim_context": True}) as p:
        trimmed = p.speak("Now.", context=(long_ago, recent)).reply_codes
        only_recent = p.speak("Now.", context=(recent,)).reply_codes
    assert np.array_equal(trimmed, only_recent)
    with pipeline(generation={**GREEDY, "trim_context": False}) as p, pytest.raises(CsmError, match="budget"):
        p.speak("Now.", context=(long_ago, recent))


@pytest.mark.parametrize("layout", ["transformers", "sesame"])
def test_checkpoint_on_disk_speaks_like_the_preset_it_was_saved_from(tmp_path, layout):
    from csm_model.mimi import save_random_mimi
    from csm_model.presets import save_preset

    checkpoint = save_preset("tiny", tmp_path / "csm", layout=layout, seed=0)
    models = {"model_path": str(checkpoint)}
    if layout == "sesame":  # Sesame's layout holds no codec: Mimi comes from its own directory
        models["mimi_path"] = str(save_random_mimi("tiny", tmp_path / "mimi", seed=0))
    with pipeline(models=models, generation=GREEDY) as p:
        from_disk = p.speak("Same weights.")
    with pipeline(generation=GREEDY) as p:
        from_preset = p.speak("Same weights.")
    assert np.array_equal(from_disk.reply_codes, from_preset.reply_codes)
    # stored tensors may differ from in-memory ones in the last bits of a sum's order: audio within 1e-4
    np.testing.assert_allclose(from_disk.audio.samples, from_preset.audio.samples, atol=1e-4, rtol=0)


def test_wrong_model_flavor_is_an_error(tmp_path):
    from csm_model.presets import save_preset

    checkpoint = save_preset("tiny", tmp_path / "csm", layout="transformers")
    with pipeline(models={"model_path": str(checkpoint), "model_flavor": "sesame"}) as p:
        with pytest.raises(CsmError, match="holds a 'transformers' checkpoint"):
            p.speak("hi")


def test_missing_checkpoint_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pipeline(models={"model_dir": str(tmp_path / "models")}) as p:
        with pytest.raises(CsmError) as excinfo:
            p.speak("hi")
    message = str(excinfo.value)
    assert str(tmp_path / "models") in message and "hub" in message and "--preset tiny" in message


def test_cuda_without_a_gpu_is_an_error_unless_fallback_is_allowed():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pipeline(device="cuda") as p, pytest.raises(BackendUnavailable, match="device 'cuda' is not usable"):
        p.speak("hi")
    with pipeline(device="cuda", allow_fallback=True, generation=GREEDY) as p:
        turn = p.speak("hi")
    assert any("falling back to 'cpu'" in event for event in turn.metrics.events)


def say(*args, env=None):
    environ = {**os.environ, "CSM_LOAD_PLUGINS": "model,pytorch", **(env or {})}
    return subprocess.run([CSMCTL, "say", *args], capture_output=True, text=True, env=environ, timeout=300)


def test_csmctl_say_writes_the_wav_and_stream_writes_the_same(tmp_path):
    common = ["--preset", "tiny", "-m", "5", "--seed", "3", "--device", "cpu"]
    plain = say("Hello there.", "-o", str(tmp_path / "a.wav"), *common)
    assert plain.returncode == 0, plain.stderr
    streamed = say("Hello there.", "-o", str(tmp_path / "b.wav"), "--stream", *common)
    assert streamed.returncode == 0, streamed.stderr
    a, rate = soundfile.read(tmp_path / "a.wav", dtype="float32")
    b, _ = soundfile.read(tmp_path / "b.wav", dtype="float32")
    assert rate == 24000 and len(a) == 5 * 1920
    np.testing.assert_array_equal(a, b)
    assert "wrote" in plain.stdout and "time to first audio" in plain.stdout


def test_csmctl_say_from_a_model_path(tmp_path):
    from csm_model.presets import save_preset

    checkpoint = save_preset("tiny", tmp_path / "csm", layout="transformers")
    result = say("From disk.", "-o", str(tmp_path / "c.wav"), "-w", str(checkpoint), "-m", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert soundfile.info(str(tmp_path / "c.wav")).frames == 3 * 1920


def test_csmctl_say_with_an_unknown_preset():
    result = say("x", "--preset", "huge", "-o", "/tmp/never.wav")
    assert result.returncode == 2 and "unknown CSM preset 'huge': choose one of csm-1b, small, tiny" in result.stderr
