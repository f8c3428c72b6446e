"""Random-weight presets: their dimensions, determinism, and the tiny preset's speed."""

from __future__ import annotations

import time

import pytest
import torch

from csm_core.errors import UnknownNameError
from csm_model.model import CsmArgs
from csm_pytorch.engines import TorchCsmEngines
from csm_model.presets import PRESETS, build_preset, get_preset, save_preset


def test_csm_1b_preset_has_sesames_dimensions():
    args = get_preset("csm-1b").args
    assert (args.backbone_layers, args.backbone_dim, args.backbone_heads, args.backbone_kv_heads, args.backbone_mlp_dim) == (
        16, 2048, 32, 8, 8192,
    )
    assert (args.decoder_layers, args.decoder_dim, args.decoder_heads, args.decoder_kv_heads, args.decoder_mlp_dim) == (
        4, 1024, 8, 2, 8192,
    )
    assert (args.text_vocab_size, args.audio_vocab_size, args.num_codebooks, args.max_seq_len) == (128_256, 2051, 32, 2048)


def _parameter_count(a: CsmArgs) -> int:
    """CSM's parameter count from its dimensions (Sesame's models.py, written out by hand)."""

    def transformer(layers, dim, heads, kv_heads, mlp):
        head_dim = dim // heads
        attn = dim * heads * head_dim * 2 + dim * kv_heads * head_dim * 2  # q, o; k, v
        return layers * (attn + 3 * dim * mlp + 2 * dim) + dim  # + 2 norms per layer, final norm

    d, v, k = a.backbone_dim, a.audio_vocab_size, a.num_codebooks
    embeddings = a.text_vocab_size * d + k * v * d
    heads = d * v + d * a.decoder_dim + (k - 1) * a.decoder_dim * v  # codebook0_head, projection, audio_head
    return (
        embeddings
        + heads
        + transformer(a.backbone_layers, d, a.backbone_heads, a.backbone_kv_heads, a.backbone_mlp_dim)
        + transformer(a.decoder_layers, a.decoder_dim, a.decoder_heads, a.decoder_kv_heads, a.decoder_mlp_dim)
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_matches_the_dimensions(name):
    preset = get_preset(name)
    assert preset.num_parameters == _parameter_count(preset.args)


def test_csm_1b_preset_is_about_one_and_a_half_billion_parameters():
    assert 1.5e9 < get_preset("csm-1b").num_parameters < 1.6e9


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_csms_codebooks_and_fits_its_tokenizer(name):
    args = get_preset(name).args
    assert (args.num_codebooks, args.audio_vocab_size) == (32, 2051)
    assert args.text_vocab_size >= 259  # the byte tokenizer's ids


def test_small_preset_is_scaled_down_in_every_dimension():
    small, real = get_preset("small").args, get_preset("csm-1b").args
    for field in ("backbone_layers", "backbone_dim", "backbone_mlp_dim", "decoder_layers", "decoder_dim", "decoder_mlp_dim"):
        assert getattr(small, field) < getattr(real, field), field


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown CSM preset 'huge': choose one of csm-1b, small, tiny"):
        get_preset("huge")


def test_unknown_layout_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="layout='onnx' is unknown; choose one of transformers, sesame, sesame-ckpt"):
        save_preset("tiny", tmp_path, layout="onnx")


def test_build_preset_depends_only_on_the_seed():
    a, tok = build_preset("tiny", seed=1)
    b, _ = build_preset("tiny", seed=1)
    c, _ = build_preset("tiny", seed=2)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
        if not name.endswith("norm.weight"):
            assert not torch.equal(x, z), name
    assert a.args == get_preset("tiny").args
    assert max(tok.encode("héllo")) < a.args.text_vocab_size


def _greedy_utterance(model, text_ids: list[int], frames: int) -> torch.Tensor:
    """Greedy codes [frames, K] for a text prompt, through the PyTorch engines."""
    args = model.args
    engines = TorchCsmEngines(model)
    engines.backbone.reset()
    with torch.inference_mode():
        prompt = model.text_embeddings(torch.tensor([text_ids]))
        hidden, logits = engines.backbone.prefill(prompt, torch.arange(len(text_ids))[None])
        position, out = len(text_ids), []
        for _ in range(frames):
            codes = [logits.argmax(-1)]
            engines.decoder.reset()
            x = torch.stack([hidden, model.audio_embeddings(codes[0])], dim=1)
            positions = torch.tensor([[0, 1]])
            for i in range(1, args.num_codebooks):
                codes.append(engines.decoder.step(x, positions).argmax(-1))
                x = model.audio_embeddings(codes[-1] + i * args.audio_vocab_size)[:, None]
                positions = torch.tensor([[i + 1]])
            frame = torch.stack(codes, dim=1)  # [1, K]
            offsets = torch.arange(args.num_codebooks) * args.audio_vocab_size
            embed = model.audio_embeddings(frame + offsets).sum(dim=1, keepdim=True)
            hidden, logits = engines.backbone.step(embed, torch.tensor([[position]]))
            position += 1
            out.append(frame[0])
    return torch.stack(out)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; more only wait on each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_preset_speaks_a_few_frames_well_under_a_second(one_thread):
    model, tokenizer = build_preset("tiny")
    ids = tokenizer.encode("[0]Hello.")
    _greedy_utterance(model, ids, 1)  # warm-up
    start = time.perf_counter()
    codes = _greedy_utterance(model, ids, 5)
    elapsed = time.perf_counter() - start
    assert codes.shape == (5, 32)
    assert int(codes.max()) < 2051
    assert elapsed < 1.0, f"5 greedy frames of the tiny preset took {elapsed:.2f} s"
