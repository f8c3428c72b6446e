"""Weight-name and config conversion: round trips, Sesame's RoPE layout, and the errors for bad input."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_model import convert  # noqa: E402
from csm_model.model import CsmArgs, random_csm, rope_inverse_frequencies  # noqa: E402

ARGS = CsmArgs(
    text_vocab_size=100, audio_vocab_size=33, num_codebooks=5,
    backbone_layers=2, backbone_dim=48, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=64,
    decoder_layers=1, decoder_dim=32, decoder_heads=2, decoder_kv_heads=1, decoder_mlp_dim=40,
    max_seq_len=64,
)


@pytest.fixture(scope="module")
def state():
    return random_csm(ARGS, seed=3).state_dict()


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_transformers_round_trip_is_identity(state):
    hf = convert.to_transformers_state_dict(state, ARGS)
    assert hf["depth_decoder.model.embed_tokens.weight"] is hf["backbone_model.embed_tokens.embed_audio_tokens.weight"]
    assert torch.equal(hf["embed_text_tokens.weight"], state["text_embeddings.weight"])
    assert torch.equal(hf["depth_decoder.codebooks_head.weight"], state["audio_head"])
    assert_same(convert.from_transformers_state_dict(hf, ARGS), state)


def test_transformers_tied_audio_embedding_may_be_stored_once(state):
    hf = convert.to_transformers_state_dict(state, ARGS)
    for name in ("depth_decoder.model.embed_tokens.weight", "backbone_model.embed_tokens.embed_audio_tokens.weight"):
        partial = {k: v for k, v in hf.items() if k != name}
        assert_same(convert.from_transformers_state_dict(partial, ARGS), state)


def test_transformers_untied_audio_embeddings_are_rejected(state):
    hf = dict(convert.to_transformers_state_dict(state, ARGS))
    hf["depth_decoder.model.embed_tokens.weight"] = hf["depth_decoder.model.embed_tokens.weight"] + 1
    with pytest.raises(ValueError, match="differ"):
        convert.from_transformers_state_dict(hf, ARGS)


def test_transformers_codec_weights_are_skipped(state):
    hf = dict(convert.to_transformers_state_dict(state, ARGS))
    hf["codec_model.encoder.layers.0.conv.weight"] = torch.zeros(3)
    assert_same(convert.from_transformers_state_dict(hf, ARGS), state)


def test_sesame_round_trip_is_identity_and_uses_sesame_names(state):
    sesame = convert.to_sesame_state_dict(state, ARGS)
    for name in (
        "backbone.layers.1.sa_norm.scale", "backbone.layers.0.attn.output_proj.weight", "decoder.layers.0.mlp.w1.weight",
        "decoder.layers.0.mlp.w2.weight", "backbone.layers.0.mlp.w3.weight", "backbone.norm.scale",
        "decoder.norm.scale", "text_embeddings.weight", "audio_embeddings.weight", "codebook0_head.weight",
        "projection.weight", "audio_head",
    ):
        assert name in sesame
    assert_same(convert.from_sesame_state_dict(sesame, ARGS), state)


def _interleaved_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """torchtune's RoPE on pairs (2i, 2i+1): x [T,H,hd], angles [T,hd/2]."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    out = torch.stack((pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin), -1)
    return out.flatten(-2)


def _half_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """transformers' rotate-half RoPE: x [T,H,hd], angles [T,hd/2]."""
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat((-x2, x1), dim=-1) * angles.sin()


@pytest.mark.parametrize("part", ["backbone", "decoder"])
def test_sesame_query_key_permutation_preserves_attention_scores(state, part):
    """Sesame weights with interleaved RoPE and ours with rotate-half RoPE give the same q.k scores."""
    sesame = convert.to_sesame_state_dict(state, ARGS)
    dim, heads, kv_heads = (getattr(ARGS, f"{part}_{n}") for n in ("dim", "heads", "kv_heads"))
    head_dim = dim // heads
    x = torch.randn(7, dim, generator=torch.Generator().manual_seed(0))
    angles = torch.outer(torch.arange(7.0) * 37, rope_inverse_frequencies(ARGS, head_dim))

    def scores(q_w, k_w, rope):
        q = rope((x @ q_w.T).view(7, heads, head_dim), angles)
        k = rope((x @ k_w.T).view(7, kv_heads, head_dim), angles).repeat_interleave(heads // kv_heads, dim=1)
        return torch.einsum("thd,shd->hts", q, k)

    prefix = f"{part}.layers.0.attn"
    ours = scores(state[f"{prefix}.q_proj.weight"], state[f"{prefix}.k_proj.weight"], _half_rope)
    theirs = scores(sesame[f"{prefix}.q_proj.weight"], sesame[f"{prefix}.k_proj.weight"], _interleaved_rope)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # and the permutation is not the identity: without it the scores differ
    wrong = scores(state[f"{prefix}.q_proj.weight"], state[f"{prefix}.k_proj.weight"], _interleaved_rope)
    assert not torch.allclose(ours, wrong, atol=1e-3)


def test_errors_name_missing_unexpected_and_wrong_shaped_tensors(state):
    hf = dict(convert.to_transformers_state_dict(state, ARGS))
    del hf["lm_head.weight"]
    hf["backbone_model.layers.9.mlp.up_proj.weight"] = torch.zeros(1)
    hf["backbone_model.norm.weight"] = torch.zeros(47)
    with pytest.raises(convert.StateDictMismatch) as info:
        convert.from_transformers_state_dict(hf, ARGS)
    message = str(info.value)
    assert "missing (1): lm_head.weight" in message
    assert "unexpected (1): backbone_model.layers.9.mlp.up_proj.weight" in message
    assert "backbone_model.norm.weight expected (48,), found (47,)" in message

    sesame = dict(convert.to_sesame_state_dict(state, ARGS))
    sesame["audio_head"] = torch.zeros(2, 2)
    with pytest.raises(convert.StateDictMismatch, match=r"audio_head expected \(4, 32, 33\), found \(2, 2\)"):
        convert.from_sesame_state_dict(sesame, ARGS)
    with pytest.raises(convert.StateDictMismatch, match="missing"):
        convert.to_sesame_state_dict({k: v for k, v in state.items() if k != "projection.weight"}, ARGS)


def test_transformers_config_round_trip():
    pytest.importorskip("transformers")
    for args in (ARGS, CsmArgs(), CsmArgs(rope_type="default", rope_theta=10_000.0, max_seq_len=512)):
        assert convert.args_from_transformers_config(convert.transformers_config_from_args(args)) == args


def test_transformers_config_with_unsupported_settings_is_rejected():
    pytest.importorskip("transformers")
    config = convert.transformers_config_from_args(ARGS)
    config.depth_decoder_config.rope_parameters = {"rope_type": "default", "rope_theta": 1.0}
    with pytest.raises(ValueError, match="rope_parameters"):
        convert.args_from_transformers_config(config)
    config = convert.transformers_config_from_args(ARGS, mlp_bias=True)
    with pytest.raises(ValueError, match="mlp_bias"):
        convert.args_from_transformers_config(config)


def test_sesame_config_of_csm_1b_is_sesames_own():
    config = convert.sesame_config_from_args(CsmArgs())
    assert config == {
        "backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M", "text_vocab_size": 128256,
        "audio_vocab_size": 2051, "audio_num_codebooks": 32,
    }
    assert convert.args_from_sesame_config(config) == CsmArgs()


def test_sesame_config_of_a_custom_shape_round_trips():
    config = convert.sesame_config_from_args(ARGS)
    assert config["backbone_flavor"] == "custom" and "csm_multi_args" in config
    assert convert.args_from_sesame_config(config) == ARGS


def test_sesame_config_errors_name_the_key():
    config = convert.sesame_config_from_args(CsmArgs())
    with pytest.raises(ValueError, match="backbone_flavor='llama-3B'.*llama-100M"):
        convert.args_from_sesame_config({**config, "backbone_flavor": "llama-3B"})
    with pytest.raises(ValueError, match="audio_num_codebooks"):
        convert.args_from_sesame_config({k: v for k, v in config.items() if k != "audio_num_codebooks"})


def test_args_validation_and_dict_round_trip():
    assert CsmArgs.from_dict(ARGS.to_dict()) == ARGS
    with pytest.raises(ValueError, match="backbone_dim=50 is not divisible by backbone_heads=4"):
        CsmArgs(backbone_dim=50, backbone_heads=4)
    with pytest.raises(ValueError, match="decoder_heads=8 is not divisible by decoder_kv_heads=3"):
        CsmArgs(decoder_kv_heads=3)
    with pytest.raises(ValueError, match="rope_type"):
        CsmArgs(rope_type="yarn")
    with pytest.raises(ValueError, match="unknown keys \\['layers'\\]"):
        CsmArgs.from_dict({"layers": 3})


def test_random_csm_is_deterministic():
    a, b, c = random_csm(ARGS, seed=5), random_csm(ARGS, seed=5), random_csm(ARGS, seed=6)
    assert_same(a.state_dict(), b.state_dict())
    assert not torch.equal(a.audio_head, c.audio_head)
