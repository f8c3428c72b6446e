"""Properties of the Csm module itself: static caches, graph capture, layout of the real CSM-1B."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_model import convert  # noqa: E402
from csm_model.model import Csm, CsmArgs, random_csm  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402

ARGS = CsmArgs(
    text_vocab_size=300, audio_vocab_size=37, num_codebooks=4,
    backbone_layers=2, backbone_dim=32, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=64,
    decoder_layers=1, decoder_dim=16, decoder_heads=2, decoder_kv_heads=1, decoder_mlp_dim=32,
    max_seq_len=64,
)


@pytest.fixture(scope="module")
def model():
    return random_csm(ARGS, seed=2)


def test_default_args_have_the_layout_of_transformers_csm_1b():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.CsmForConditionalGeneration(transformers.CsmConfig())
    theirs = {n: tuple(t.shape) for n, t in hf.state_dict().items() if not n.startswith("codec_model.")}
    ours = {n: tuple(t.shape) for n, t in convert.to_transformers_state_dict(
        {n: torch.empty(s, device="meta") for n, s in convert.expected_shapes(CsmArgs()).items()}, CsmArgs()
    ).items()}
    assert ours == theirs


def test_state_dict_holds_parameters_only(model):
    TorchCsmEngines(model)
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}


def test_calls_before_setup_or_beyond_the_cache_batch_fail_clearly():
    model = random_csm(ARGS, seed=2)
    with pytest.raises(RuntimeError, match="call Csm.setup_caches"):
        model.backbone_logits(torch.zeros(1, 1, 32), torch.zeros(1, 1, dtype=torch.long))
    model.setup_caches(1)
    with pytest.raises(ValueError, match="batch of 2 exceeds the cache's batch size 1"):
        model.backbone_logits(torch.zeros(2, 1, 32), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size=0"):
        model.setup_caches(0)


def test_reset_forgets_the_sequence(model):
    engines = TorchCsmEngines(model)
    gen = torch.Generator().manual_seed(0)
    first = torch.randn(1, 6, 32, generator=gen)
    expected = engines.backbone.prefill(first[:, :3], torch.arange(3)[None])
    engines.backbone.prefill(first, torch.arange(6)[None])
    engines.backbone.reset()
    got = engines.backbone.prefill(first[:, :3], torch.arange(3)[None])
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_incremental_steps_equal_one_prefill(model):
    engines = TorchCsmEngines(model)
    x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
    full = engines.backbone.prefill(x, torch.arange(5)[None])
    engines.backbone.reset()
    engines.backbone.prefill(x[:, :2], torch.arange(2)[None])
    for t in range(2, 5):
        step = engines.backbone.step(x[:, t : t + 1], torch.tensor([[t]]))
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_a_step_is_one_graph_without_breaks(model):
    """Dynamo captures a backbone step and a decoder step whole (what CUDA-graph capture needs)."""
    TorchCsmEngines(model)
    backbone = torch.compile(model.backbone_logits, backend="eager", fullgraph=True, dynamic=False)
    decoder = torch.compile(model.decoder_logits, backend="eager", fullgraph=True, dynamic=False)
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        model.backbone_logits(torch.randn(1, 4, 32, generator=gen), torch.arange(4)[None])
        for i in range(3):  # different positions, same graph
            x = torch.randn(1, 1, 32, generator=gen)
            compiled = backbone(x, torch.tensor([[4 + i]]))
            eager = model.backbone_logits(x, torch.tensor([[4 + i]]))
            torch.testing.assert_close(compiled, eager)
            y = torch.randn(1, 1, 32, generator=gen)
            torch.testing.assert_close(decoder(y, torch.tensor([[1 + i]])), model.decoder_logits(y, torch.tensor([[1 + i]])))


def test_csm_is_built_without_allocating_on_meta():
    with torch.device("meta"):
        model = Csm(CsmArgs())
    count = sum(p.numel() for p in model.parameters())
    assert 1.4e9 < count < 1.7e9  # CSM-1B: ~1.2B backbone + embeddings, ~0.1B decoder + heads


def test_one_position_grouped_attention_reads_the_cache_as_the_plain_form_does():
    """The step path (query heads folded onto their cache head) equals repeating the cache per head."""
    import torch.nn.functional as F

    from csm_model.model import grouped_attention

    gen = torch.Generator().manual_seed(4)
    q = torch.randn(3, 8, 1, 16, generator=gen)
    k, v = torch.randn(3, 2, 40, 16, generator=gen), torch.randn(3, 2, 40, 16, generator=gen)
    mask = torch.arange(40)[None, None, None, :] <= torch.tensor([5, 17, 39])[:, None, None, None]  # [3,1,1,40]
    plain = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask)
    torch.testing.assert_close(grouped_attention(q, k, v, mask), plain)
    torch.testing.assert_close(grouped_attention(q, k, v, None),
                               F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)))


def test_decoder_logits_are_the_same_for_rows_at_one_codebook_and_at_several(model):
    """Rows at one codebook take that head once; rows at different codebooks gather a head each."""
    TorchCsmEngines(model, batch_size=2)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 32, generator=gen)
    with torch.inference_mode():
        same = model.decoder_logits(x, torch.tensor([[2], [2]]))
        mixed = model.decoder_logits(x, torch.tensor([[2], [3]]))
    torch.testing.assert_close(mixed[0], same[0])
    assert not torch.allclose(mixed[1], same[1])  # row 1 used codebook 3's head
