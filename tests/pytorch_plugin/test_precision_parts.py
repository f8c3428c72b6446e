"""Per-part precision of the PyTorch CSM: only the transformer layers change dtype; logits stay float32."""

from __future__ import annotations

import pytest
import torch

from csm_pytorch.engines import TorchCsmEngines
from csm_model.presets import build_preset


def test_set_part_dtypes_casts_only_the_transformer_parts_and_their_caches():
    model, _ = build_preset("tiny", 0)
    model.set_part_dtypes(torch.bfloat16, torch.float16)
    for name, param in model.named_parameters():
        want = {"backbone": torch.bfloat16, "decoder": torch.float16}.get(name.split(".")[0], torch.float32)
        assert param.dtype == want, name
    engines = TorchCsmEngines(model)
    assert model.backbone.layers[0].attn.k_cache.dtype == torch.bfloat16
    assert model.decoder.layers[0].attn.v_cache.dtype == torch.float16
    embeds = model.text_embeddings(torch.tensor([[1, 2, 3]]))
    hidden, logits = engines.backbone.prefill(embeds, torch.arange(3)[None])
    assert hidden.dtype == logits.dtype == torch.float32
    x = torch.cat((hidden[:, None], embeds[:, :1]), dim=1)
    assert engines.decoder.step(x, torch.arange(2)[None]).dtype == torch.float32


def test_a_mixed_plan_stays_close_to_fp32_and_fp32_parts_are_unchanged():
    reference, _ = build_preset("tiny", 0)
    model, _ = build_preset("tiny", 0)
    model.set_part_dtypes(torch.float32, torch.bfloat16)  # backbone stays exact
    ref, test = TorchCsmEngines(reference), TorchCsmEngines(model)
    embeds = reference.text_embeddings(torch.tensor([[5, 6, 7, 8]]))
    positions = torch.arange(4)[None]
    ref_hidden, ref_logits = ref.backbone.prefill(embeds, positions)
    hidden, logits = test.backbone.prefill(embeds, positions)
    assert torch.equal(hidden, ref_hidden) and torch.equal(logits, ref_logits)
    x = torch.cat((hidden[:, None], embeds[:, :1]), dim=1)
    ref_dec, dec = ref.decoder.step(x, torch.arange(2)[None]), test.decoder.step(x, torch.arange(2)[None])
    error = float((dec - ref_dec).norm() / ref_dec.norm())
    assert 0.0 < error < 2e-2


def test_set_part_dtypes_drops_the_caches_and_refuses_non_float_dtypes():
    model, _ = build_preset("tiny", 0)
    TorchCsmEngines(model)
    model.set_part_dtypes(torch.float16, torch.float16)
    with pytest.raises(RuntimeError, match="call Csm.setup_caches"):
        model.backbone(torch.zeros(1, 1, model.args.backbone_dim), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="decoder=torch.int8 must be a floating-point torch.dtype"):
        model.set_part_dtypes(torch.float16, torch.int8)
