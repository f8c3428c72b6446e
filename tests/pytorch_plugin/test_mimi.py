"""TorchMimi against transformers' MimiModel (same random weights), streaming against batch decoding,
and loading from checkpoints written by the tests themselves."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import MimiModel

from csm_core.components import CodecEngine
from csm_core.errors import CsmError
from csm_model.mimi import (
    MimiDecoderState,
    MimiNotFoundError,
    TorchMimi,
    find_mimi,
    load_mimi,
    mimi_config,
    random_mimi,
    save_random_mimi,
)

FRAME = 1920


@pytest.fixture(scope="module")
def model():
    return random_mimi("tiny", seed=0)


@pytest.fixture(scope="module")
def codec(model):
    return TorchMimi(model, num_codebooks=32)


def random_codes(batch: int, frames: int, seed: int, k: int = 32) -> torch.Tensor:
    return torch.randint(0, 2048, (batch, k, frames), generator=torch.Generator().manual_seed(seed))


def random_pcm(batch: int, samples: int, seed: int) -> torch.Tensor:
    return 0.3 * torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed))


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Random weights give PCM far outside [-1, 1]: compare relative to the signal's peak."""
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    peak = expected.abs().max().item()
    assert err <= rel * peak, f"max error {err:.3g} exceeds {rel} x peak {peak:.3g}"


def stream(codec: TorchMimi, codes: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    assert sum(chunks) == codes.shape[-1]
    state, outs, start = codec.init_state(codes.shape[0]), [], 0
    for n in chunks:
        pcm, state = codec.decode_step(codes[..., start : start + n], state)
        assert pcm.shape == (codes.shape[0], 1, n * FRAME)
        outs.append(pcm)
        start += n
    return torch.cat(outs, dim=-1)


# ------------------------------------------------------------------------------------ engine interface
def test_codec_properties(codec):
    assert isinstance(codec, CodecEngine)
    assert (codec.sample_rate, codec.frame_rate, codec.samples_per_frame) == (24_000, 12.5, FRAME)
    assert codec.num_codebooks == 32 and codec.codebook_size == 2048


def test_presets_keep_the_codec_interface():
    real = mimi_config("real").to_dict()
    for preset in ("tiny", "small", "real"):
        cfg = mimi_config(preset)
        assert (cfg.sampling_rate, cfg.frame_size, cfg.num_quantizers, cfg.codebook_size) == (24_000, FRAME, 32, 2048)
    assert real["hidden_size"] == 512 and real["num_hidden_layers"] == 8 and real["sliding_window"] == 250
    with pytest.raises(ValueError, match="choose one of tiny, small, real"):
        mimi_config("huge")


def test_random_mimi_is_seeded():
    a, b, c = (random_mimi("tiny", seed=s).state_dict() for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["quantizer.semantic_residual_vector_quantizer.layers.0.codebook.embed_sum"],
                           c["quantizer.semantic_residual_vector_quantizer.layers.0.codebook.embed_sum"])


# ------------------------------------------------------------------------ parity with transformers
def test_encode_equals_transformers(model, codec):
    pcm = random_pcm(2, 3 * FRAME, seed=1)
    codes = codec.encode(pcm)
    assert codes.dtype == torch.int64 and codes.shape == (2, 32, 3)
    with torch.no_grad():
        assert torch.equal(codes, model.encode(pcm).audio_codes)
    assert codes[:, 1:].unique().numel() > 20  # random codebooks: the codes are not all alike


def test_encode_pads_to_whole_frames(model, codec):
    pcm = random_pcm(1, 2 * FRAME + 100, seed=2)
    codes = codec.encode(pcm)
    assert codes.shape == (1, 32, 3)
    padded = torch.nn.functional.pad(pcm, (0, FRAME - 100))
    with torch.no_grad():
        assert torch.equal(codes, model.encode(padded).audio_codes)


def test_decode_equals_transformers(model, codec):
    codes = random_codes(2, 5, seed=3)
    pcm = codec.decode(codes)
    assert pcm.shape == (2, 1, 5 * FRAME) and pcm.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(pcm, model.decode(codes).audio_values)


def test_fewer_codebooks_equal_transformers(model):
    codec8 = TorchMimi(model, num_codebooks=8)
    pcm = random_pcm(1, 2 * FRAME, seed=4)
    codes = codec8.encode(pcm)
    assert codes.shape == (1, 8, 2)
    with torch.no_grad():
        assert torch.equal(codes, model.encode(pcm, num_quantizers=8).audio_codes)
        assert torch.equal(codec8.decode(codes), model.decode(codes).audio_values)


# --------------------------------------------------------------------------------------- streaming
# 10 frames = 20 transformer positions, more than twice the tiny preset's window of 8 positions.
@pytest.mark.parametrize("chunks", [[1] * 10, [3, 3, 3, 1], [2, 5, 1, 2], [10]], ids=["by-1", "by-3", "mixed", "all"])
def test_streaming_decode_equals_batch_decode(codec, chunks):
    codes = random_codes(2, 10, seed=5)
    assert_close_rel(stream(codec, codes, chunks), codec.decode(codes))


def test_streaming_respects_the_sliding_window():
    """With the window cut to 2 positions, streaming still matches transformers' windowed decode."""
    cfg = mimi_config("tiny")
    cfg.sliding_window = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        narrow = TorchMimi(MimiModel(cfg).eval())
    codes = random_codes(1, 6, seed=6)
    assert_close_rel(stream(narrow, codes, [1] * 6), narrow.decode(codes))
    assert_close_rel(stream(narrow, codes, [3, 3]), narrow.decode(codes))


def test_states_are_independent_and_never_modified(codec):
    a, b = random_codes(1, 4, seed=7), random_codes(1, 4, seed=8)
    sa, sb, outs_a, outs_b = codec.init_state(), codec.init_state(), [], []
    for i in range(4):  # interleave the two streams
        pa, sa = codec.decode_step(a[..., i : i + 1], sa)
        pb, sb = codec.decode_step(b[..., i : i + 1], sb)
        outs_a.append(pa)
        outs_b.append(pb)
    assert torch.equal(torch.cat(outs_a, -1), stream(codec, a, [1] * 4))
    assert torch.equal(torch.cat(outs_b, -1), stream(codec, b, [1] * 4))
    # A state can be decoded from twice (rewind): the first call left it as it was.
    first, _ = codec.decode_step(b[..., 2:3], sa)
    again, _ = codec.decode_step(b[..., 2:3], sa)
    assert torch.equal(first, again)


def test_state_is_flat_fixed_size_tensors(codec):
    fresh = codec.init_state(2)
    state = fresh
    for i in range(6):
        _, state = codec.decode_step(random_codes(2, 1, seed=20 + i), state)
    names = list(state.tensors())
    assert names == list(fresh.tensors())
    assert all(state.tensors()[n].shape == fresh.tensors()[n].shape for n in names)  # nothing grows
    assert int(state.position) == 12
    codes = random_codes(2, 2, seed=30)
    rebuilt = MimiDecoderState.from_tensors(state.tensors())
    assert torch.equal(codec.decode_step(codes, rebuilt)[0], codec.decode_step(codes, state)[0])


def test_streaming_encode_equals_encode(codec):
    pcm = random_pcm(2, 7 * FRAME, seed=9)
    state, outs = codec.init_encoder_state(), []
    for start, n in ((0, 1), (1, 3), (4, 3)):
        codes, state = codec.encode_step(pcm[..., start * FRAME : (start + n) * FRAME], state)
        outs.append(codes)
    assert torch.equal(torch.cat(outs, -1), codec.encode(pcm))
    with pytest.raises(ValueError, match="multiple of 1920"):
        codec.encode_step(pcm[..., :100], codec.init_encoder_state())


def test_non_causal_config_cannot_stream():
    cfg = mimi_config("tiny")
    cfg.trim_right_ratio = 0.5
    codec = TorchMimi(MimiModel(cfg).eval())
    codec.decode(random_codes(1, 1, seed=0))  # whole-utterance decoding still works
    with pytest.raises(ValueError, match="trim_right_ratio=0.5"):
        codec.init_state()


# ------------------------------------------------------------------------------------------ loading
def test_saved_preset_reloads_with_identical_outputs(tmp_path):
    directory = save_random_mimi("tiny", tmp_path / "mimi", seed=1)
    assert find_mimi(directory) == directory
    assert find_mimi(directory / "config.json") == directory
    loaded = load_mimi(directory, num_codebooks=32)
    reference = TorchMimi(random_mimi("tiny", seed=1))
    pcm, codes = random_pcm(1, 2 * FRAME, seed=10), random_codes(1, 3, seed=11)
    assert torch.equal(loaded.encode(pcm), reference.encode(pcm))
    assert torch.equal(loaded.decode(codes), reference.decode(codes))


def test_load_in_bfloat16_streams_like_it_decodes(tmp_path):
    codec = load_mimi(save_random_mimi("tiny", tmp_path / "mimi"), dtype=torch.bfloat16)
    codes = random_codes(1, 4, seed=12)
    batch, streamed = codec.decode(codes), stream(codec, codes, [1] * 4)
    assert batch.dtype == streamed.dtype == torch.bfloat16
    assert_close_rel(streamed.float(), batch.float(), rel=5e-2)  # bf16 rounds at about 4e-3


def test_find_mimi_in_the_hf_cache(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--kyutai--mimi" / "snapshots" / "abc123"
    save_random_mimi("tiny", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert find_mimi() == snapshot
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(MimiNotFoundError, match="elsewhere"):
        find_mimi()
    assert find_mimi(cache_dir=tmp_path / "hub") == snapshot


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(MimiNotFoundError, match="nope.*needs config.json and model.safetensors"):
        load_mimi(tmp_path / "nope")


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    directory = save_random_mimi("tiny", tmp_path / "mimi")
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CsmError, match="could not load the Mimi checkpoint"):
        load_mimi(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(CsmError, match="model_type 'llama', not 'mimi'"):
        load_mimi(directory)


def test_checkpoint_with_missing_weights_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_random_mimi("tiny", tmp_path / "mimi")
    tensors = load_file(directory / "model.safetensors")
    dropped = [k for k in tensors if "decoder_transformer.layers.0.self_attn.q_proj" in k]
    assert dropped
    save_file({k: v for k, v in tensors.items() if k not in dropped}, directory / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CsmError, match="lacks 1 weights"):
        load_mimi(directory)


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "pcm, message",
    [
        (torch.zeros(1, FRAME), r"\[batch, 1, samples\].*\(1, 1920\)"),
        (torch.zeros(1, 2, FRAME), r"\(1, 2, 1920\)"),
        (torch.zeros(1, 1, 0), r"samples > 0"),
        (torch.zeros(1, 1, FRAME, dtype=torch.int16), r"float PCM.*int16"),
        ([0.0] * FRAME, r"got list"),
    ],
)
def test_bad_pcm_is_rejected(codec, pcm, message):
    with pytest.raises(ValueError, match=message):
        codec.encode(pcm)


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.zeros(32, 4, dtype=torch.int64), r"\[batch, codebooks, frames\], got \(32, 4\)"),
        (torch.zeros(1, 31, 4, dtype=torch.int64), r"\[batch>0, 32, frames>0\].*\(1, 31, 4\)"),
        (torch.zeros(1, 32, 0, dtype=torch.int64), r"\(1, 32, 0\)"),
        (torch.zeros(1, 32, 4), r"integer tensor.*float32"),
        (torch.full((1, 32, 4), 2048), r"\[0, 2048\), got values in \[2048, 2048\]"),
        (torch.full((1, 32, 4), -1), r"got values in \[-1, -1\]"),
    ],
)
def test_bad_codes_are_rejected(codec, codes, message):
    with pytest.raises(ValueError, match=message):
        codec.decode(codes)
    with pytest.raises(ValueError, match=message):
        codec.decode_step(codes, codec.init_state(1))


def test_bad_state_and_settings_are_rejected(model, codec):
    with pytest.raises(ValueError, match="batch size 2 but the state was made for 1"):
        codec.decode_step(random_codes(2, 1, seed=0), codec.init_state(1))
    with pytest.raises(TypeError, match="MimiDecoderState"):
        codec.decode_step(random_codes(1, 1, seed=0), None)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        codec.init_state(0)
    with pytest.raises(ValueError, match=r"num_codebooks must be an int in \[1, 32\].*33"):
        TorchMimi(model, num_codebooks=33)


@pytest.mark.parametrize("window", [None, 2])
def test_decode_rows_of_streams_that_started_at_different_times_equals_each_alone(codec, window):
    """Three streams at positions 5, 2 and 0 frames (window 2: past the sliding window) decoded together,
    frame after frame, give each stream's own decode_step output and state."""
    if window is not None:
        cfg = mimi_config("tiny")
        cfg.sliding_window = window
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            codec = TorchMimi(MimiModel(cfg).eval())
    histories = [random_codes(1, n, seed=10 + n) for n in (5, 2, 0)]
    states = []
    for history in histories:
        state = codec.init_state(1)
        if history.shape[-1]:
            _, state = codec.decode_step(history, state)
        states.append(state)
    alone = list(states)
    for frame in range(3):
        codes = random_codes(3, 1, seed=20 + frame)
        pcm, states = codec.decode_rows(codes, states)
        assert pcm.shape == (3, 1, FRAME)
        for i in range(3):
            expected, alone[i] = codec.decode_step(codes[i : i + 1], alone[i])
            assert_close_rel(pcm[i : i + 1], expected)
            assert int(states[i].position) == int(alone[i].position)
            assert_close_rel(states[i].keys, alone[i].keys)
    with pytest.raises(ValueError, match="one single-stream state per row"):
        codec.decode_rows(random_codes(2, 1, seed=1), states)
