"""The physical floor: weight bytes read per frame, from a config worked out by hand and from the model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from csm_bench.floor import floor_for, measure_bandwidth, parameters_read_per_frame

# Small enough to count by hand (see test_floor_of_a_config_counted_by_hand).
ARGS = SimpleNamespace(
    num_codebooks=3, audio_vocab_size=10,
    backbone_layers=1, backbone_dim=4, backbone_heads=2, backbone_kv_heads=1, backbone_mlp_dim=8,
    decoder_layers=1, decoder_dim=2, decoder_heads=1, decoder_kv_heads=1, decoder_mlp_dim=4,
)


def test_floor_of_a_config_counted_by_hand():
    # backbone layer: q 4x4 + k,v 2x(4x2) + o 4x4 = 48; MLP 3x4x8 = 96; two norms 8 -> 152; + final norm 4 = 156
    # decoder pass: q 2x2 + k,v 2x(2x2) + o 2x2 = 16; MLP 3x2x4 = 24; norms 4 -> 44; + final norm 2 = 46;
    #   two passes (K - 1) = 92
    # heads: codebook-0 head 4x10 = 40; per decoder pass projection 4x2 + one audio head 2x10 = 28; 40 + 2x28 = 96
    # embeddings: K rows of 4 = 12
    assert parameters_read_per_frame(ARGS) == {"backbone": 156, "decoder": 92, "heads": 96, "embeddings": 12}
    fp32 = floor_for(ARGS, "fp32", bandwidth_bytes_per_s=1424.0, bandwidth_source="given")
    assert fp32.bytes_per_frame == 356 * 4 and fp32.precision == "fp32"
    assert fp32.seconds_per_frame == pytest.approx(1.0) and fp32.frames_per_second == pytest.approx(1.0)
    bf16 = floor_for(ARGS, "bf16", 1424.0, "given")
    assert bf16.bytes_per_frame == 356 * 2 and bf16.frames_per_second == pytest.approx(2.0)
    assert bf16.multiple(0.5) == pytest.approx(4.0)  # 2 s per frame against a 0.5 s floor
    assert bf16.multiple(None) is None
    # selective precision: transformer layers in bf16, heads and embeddings in fp32
    mixed = floor_for(ARGS, {"backbone": "bf16", "decoder": "bf16", "heads": "fp32"}, 928.0, "given")
    assert mixed.bytes_per_frame == (156 + 92) * 2 + (96 + 12) * 4 == 928
    assert mixed.precision == "backbone bf16, decoder bf16, heads fp32"


def test_floor_counts_the_weights_the_model_has():
    torch = pytest.importorskip("torch")
    from csm_model.model import Csm
    from csm_model.presets import get_preset

    args = get_preset("tiny").args
    with torch.device("meta"):
        model = Csm(args)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    parts = parameters_read_per_frame(args)
    assert parts["backbone"] == count(model.backbone)
    assert parts["decoder"] == (args.num_codebooks - 1) * count(model.decoder)
    head_pass = count(model.projection) + model.audio_head[0].numel()
    assert parts["heads"] == count(model.codebook0_head) + (args.num_codebooks - 1) * head_pass


@pytest.mark.parametrize(("precision", "bandwidth", "word"), [
    ("int4", 1e9, "precision of backbone='int4'"), ({"backbone": "fp32", "decoder": "fp32"}, 1e9, "heads=None"),
    ("fp32", 0.0, "bandwidth"),
])
def test_floor_rejects_bad_input(precision, bandwidth, word):
    with pytest.raises(ValueError, match=word):
        floor_for(ARGS, precision, bandwidth, "given")


def test_bandwidth_probe_measures_and_says_so():
    pytest.importorskip("numpy")
    bytes_per_s, source = measure_bandwidth("cpu", megabytes=8, repeats=2)
    assert 1e8 < bytes_per_s < 1e13  # between 0.1 GB/s and 10 TB/s: a copy really ran
    assert source.startswith("measured") and "8 MiB" in source
