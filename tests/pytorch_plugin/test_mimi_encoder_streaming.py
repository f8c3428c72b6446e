"""The streaming Mimi encoder (explicit state) against TorchMimi.encode and transformers' own streaming
encode: identical codes for every chunking of whole frames, batch 1 and 2, on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from audio_signals import tone
from csm_model.hf_compat import (
    mimi_encode_streaming,
)
from csm_model.mimi import MIMI_PRESETS, TorchMimi, random_mimi
from csm_model.mimi_encoder_streaming import (
    MimiEncoderStreamState,
    MimiStreamingEncoder,
    mimi_encoder_parts,
)
from transformers import MimiConfig, MimiModel

FRAME = 1920
RATE = 24_000


def speechlike(seconds: float, variant: int = 0) -> torch.Tensor:
    """[N] a deterministic signal: three tones under a slow envelope, plus a DC offset so that the first
    sample is not 0 (the downsampling conv replicates its first input: zeros there would hide a bug)."""
    n = int(seconds * RATE)
    base = 110.0 * (1 + variant)
    x = tone(base, seconds, RATE, 0.3) + tone(2.7 * base, seconds, RATE, 0.15) + tone(7.3 * base, seconds, RATE, 0.05)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (1.3 + variant) * np.arange(n) / RATE)
    return torch.from_numpy((x * envelope + 0.1).astype(np.float32))


def clip(batch: int, frames: int) -> torch.Tensor:
    """[B,1,frames*FRAME] of :func:`speechlike` signals, a different one per row."""
    return torch.stack([speechlike(frames * FRAME / RATE, b) for b in range(batch)])[:, None]


def seeded_mimi(config: MimiConfig, seed: int = 0) -> MimiModel:
    """As :func:`random_mimi`, for any config."""
    return random_mimi(seed=seed, config=config)


def stream(encoder: MimiStreamingEncoder, pcm: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    assert sum(chunks) * FRAME == pcm.shape[-1]
    state, outs, start = encoder.init_state(pcm.shape[0]), [], 0
    shapes = {n: t.shape for n, t in state.tensors().items()}
    for n in chunks:
        codes, state = encoder.step(pcm[..., start * FRAME : (start + n) * FRAME], state)
        assert codes.dtype == torch.int64 and codes.shape == (pcm.shape[0], encoder.num_codebooks, n)
        outs.append(codes)
        start += n
    assert {n: t.shape for n, t in state.tensors().items()} == shapes  # nothing grows with time
    assert int(state.position) == 2 * sum(chunks)
    return torch.cat(outs, dim=-1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Streaming runs many small ops: on a shared 2-core CPU, two intra-op threads make them up to ~50x
    slower (spin-waiting) than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return random_mimi("tiny", seed=0)


@pytest.fixture(scope="module")
def encoder(tiny):
    return MimiStreamingEncoder(tiny)


# 38 frames (3 s) = 76 transformer positions, many times the tiny preset's window of 8 positions.
CHUNKINGS = {"by-1": [1] * 38, "by-4": [4] * 9 + [2], "mixed": [2, 5, 1, 7, 3, 1, 6, 13], "all": [38]}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("chunks", list(CHUNKINGS.values()), ids=list(CHUNKINGS))
def test_streaming_codes_equal_torch_mimi_encode(tiny, encoder, batch, chunks):
    pcm = clip(batch, 38)
    want = TorchMimi(tiny).encode(pcm)
    got = stream(encoder, pcm, chunks)
    assert torch.equal(got, want)
    assert got[:, 1:].unique().numel() > 50  # random codebooks: the codes are far from all alike


@pytest.mark.parametrize("chunk", [1, 5])
def test_streaming_codes_equal_transformers_streaming_encode(tiny, encoder, chunk):
    pcm = clip(2, 20)
    cache = padding_cache = None
    pieces = []
    for start in range(0, 20, chunk):
        codes, cache, padding_cache = mimi_encode_streaming(
            tiny, pcm[..., start * FRAME : (start + chunk) * FRAME], 32, cache, padding_cache
        )
        pieces.append(codes)
    assert torch.equal(stream(encoder, pcm, [chunk] * (20 // chunk)), torch.cat(pieces, dim=-1))


def test_a_clip_of_part_frames_is_padded_like_torch_mimi(tiny, encoder):
    pcm = clip(1, 9)[..., : 8 * FRAME + 700]
    padded = torch.nn.functional.pad(pcm, (0, -pcm.shape[-1] % FRAME))
    assert torch.equal(stream(encoder, padded, [3, 3, 3]), TorchMimi(tiny).encode(pcm))


def test_fewer_codebooks(tiny):
    pcm = clip(1, 6)
    got = stream(MimiStreamingEncoder(tiny, num_codebooks=8), pcm, [1] * 6)
    assert torch.equal(got, TorchMimi(tiny, num_codebooks=8).encode(pcm))
    with pytest.raises(ValueError, match=r"num_codebooks must be an int in \[1, 32\]"):
        MimiStreamingEncoder(tiny, num_codebooks=33)


def test_the_downsampling_starts_from_its_first_input_repeated(tiny, encoder, monkeypatch):
    """``pad_mode="replicate"``: with zeros as the downsampling conv's first context instead, frame 0 differs."""
    pcm = clip(1, 3)
    want = TorchMimi(tiny).encode(pcm)
    assert mimi_encoder_parts(tiny).downsample.pad_mode == "replicate"
    assert torch.equal(encoder.step(pcm, encoder.init_state())[0], want)
    monkeypatch.setattr(mimi_encoder_parts(tiny).downsample, "pad_mode", "constant")
    wrong = encoder.step(pcm, encoder.init_state())[0]
    assert not torch.equal(wrong[..., 0], want[..., 0])
    assert torch.equal(wrong[..., 1:], want[..., 1:])  # later frames see the real previous inputs either way


def test_states_are_never_modified_and_can_rewind(encoder):
    pcm = clip(1, 6)
    state = encoder.init_state()
    codes, after_3 = encoder.step(pcm[..., : 3 * FRAME], state)
    before = {n: t.clone() for n, t in after_3.tensors().items()}
    first, _ = encoder.step(pcm[..., 3 * FRAME :], after_3)
    again, _ = encoder.step(pcm[..., 3 * FRAME :], after_3)  # the same state, used twice
    assert torch.equal(first, again)
    assert all(torch.equal(before[n], t) for n, t in after_3.tensors().items())
    assert torch.equal(torch.cat([codes, first], dim=-1), encoder.step(pcm, state)[0])


def test_state_tensors_round_trip_and_fixed_shapes(tiny, encoder):
    cfg = tiny.config
    state = encoder.init_state(2)
    tensors = state.tensors()
    assert list(tensors)[:3] == ["keys", "values", "position"]
    assert tensors["keys"].shape == (cfg.num_hidden_layers, 2, cfg.num_key_value_heads, cfg.sliding_window - 1, cfg.head_dim)
    assert tensors["position"].shape == () and tensors["position"].dtype == torch.int64
    # one context per conv with a kernel wider than its stride (SEANet encoder), then the downsampling's
    assert [tuple(t.shape) for n, t in tensors.items() if n.startswith("conv_context.")][-1] == (2, cfg.hidden_size, 2)
    back = MimiEncoderStreamState.from_tensors(tensors)
    assert back.batch_size == 2 and list(back.tensors()) == list(tensors)
    assert all(a is b for a, b in zip(back.tensors().values(), tensors.values()))


def test_bad_input_is_refused(encoder):
    state = encoder.init_state(1)
    with pytest.raises(ValueError, match="whole frames"):
        encoder.step(torch.zeros(1, 1, FRAME + 1), state)
    with pytest.raises(ValueError, match="batch size 2"):
        encoder.step(torch.zeros(2, 1, FRAME), state)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        encoder.init_state(0)


def test_a_narrow_window_still_matches():
    """With the window cut to 2 positions (1 frame), streaming still matches transformers' windowed encode."""
    cfg = MimiConfig(**{**MIMI_PRESETS["tiny"], "sliding_window": 2})
    model = seeded_mimi(cfg, seed=1)
    pcm = clip(1, 8)
    want = TorchMimi(model).encode(pcm)
    enc = MimiStreamingEncoder(model)
    assert torch.equal(stream(enc, pcm, [1] * 8), want)
    assert torch.equal(stream(enc, pcm, [3, 5]), want)


def test_real_sized_mimi_with_a_short_window():
    """kyutai/mimi's sizes (SEANet widths, 8 layers of 512) with the window cut from 250 to 16 positions
    (8 frames), so that 2 s exercise it."""
    model = seeded_mimi(MimiConfig(**{**MIMI_PRESETS["real"], "sliding_window": 16}), seed=2)
    pcm = clip(1, 24)
    want = TorchMimi(model).encode(pcm)
    enc = MimiStreamingEncoder(model)
    assert torch.equal(stream(enc, pcm, [1] * 24), want)
    assert torch.equal(stream(enc, pcm, [5, 5, 5, 5, 4]), want)


@pytest.mark.slow
def test_real_preset_past_its_window():
    """kyutai/mimi's config as is: 11 s (138 frames, 276 positions) go past its 250-position window."""
    model = random_mimi("real", seed=0)
    pcm = clip(2, 138)
    want = TorchMimi(model).encode(pcm)
    enc = MimiStreamingEncoder(model)
    assert torch.equal(stream(enc, pcm, [1] * 138), want)
    assert torch.equal(stream(enc, pcm, [7] * 19 + [5]), want)
