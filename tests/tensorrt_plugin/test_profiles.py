"""Optimization-profile shapes from the config and the graph's input shapes."""

from __future__ import annotations

import pytest

from csm_core.errors import ConfigError
from csm_tensorrt import profiles as P

BACKBONE_INPUTS = {
    "inputs_embeds": (1, "T", 64),
    "position_ids": (1, "T"),
    "past_key_values.0.key": (1, 2, 128, 16),
}


def test_prefill_ranges_run_up_to_max_seq_len():
    ranges = P.axis_ranges(P.BACKBONE_PREFILL, P.TrtOptions(), max_seq_len=128)
    shapes = P.profile_shapes(P.BACKBONE_PREFILL, BACKBONE_INPUTS, ranges)
    assert shapes["inputs_embeds"] == ((1, 1, 64), (1, 128, 64), (1, 128, 64))
    assert shapes["position_ids"] == ((1, 1), (1, 128), (1, 128))
    assert "past_key_values.0.key" not in shapes  # static: no profile entry


def test_dynamic_batch_takes_the_configured_batch_range():
    options = P.TrtOptions.from_mapping({"max_batch_size": 4, "opt_batch_size": 2, "opt_prefill_len": 32})
    ranges = P.axis_ranges(P.BACKBONE_PREFILL, options, max_seq_len=2048)
    shapes = P.profile_shapes(P.BACKBONE_PREFILL, {"inputs_embeds": ("B", "T", 8)}, ranges)
    assert shapes["inputs_embeds"] == ((1, 1, 8), (2, 32, 8), (4, 2048, 8))


def test_codec_ranges_in_samples_and_frames():
    options = P.TrtOptions.from_mapping({"max_encode_frames": 10, "opt_encode_frames": 5, "max_decode_frames": 3})
    enc = P.profile_shapes(P.MIMI_ENCODER, {"pcm": (1, 1, None)}, P.axis_ranges(P.MIMI_ENCODER, options, max_seq_len=1, samples_per_frame=1920))
    assert enc["pcm"] == ((1, 1, 1920), (1, 1, 5 * 1920), (1, 1, 10 * 1920))
    dec = P.profile_shapes(P.MIMI_DECODER_STEP, {"codes": (1, 32, "F"), "state.position": ()}, P.axis_ranges(P.MIMI_DECODER_STEP, options, max_seq_len=1))
    assert dec == {"codes": ((1, 32, 1), (1, 32, 1), (1, 32, 3))}


def test_decoder_takes_two_then_one_position():
    ranges = P.axis_ranges(P.DECODER_STEP, P.TrtOptions(), max_seq_len=2048)
    assert ranges["sequence"] == P.AxisRange(1, 1, 2)


def test_prefill_longer_than_the_model_is_rejected():
    with pytest.raises(ConfigError, match="max_prefill_len=4096 exceeds the model's max_seq_len=2048"):
        P.axis_ranges(P.BACKBONE_PREFILL, P.TrtOptions.from_mapping({"max_prefill_len": 4096}), max_seq_len=2048)


def test_opt_above_max_is_rejected():
    with pytest.raises(ConfigError, match="opt_batch_size=8 exceeds options.tensorrt.max_batch_size=2"):
        P.TrtOptions.from_mapping({"opt_batch_size": 8, "max_batch_size": 2})
    with pytest.raises(ConfigError, match="opt_prefill_len=300"):
        P.axis_ranges(P.BACKBONE_PREFILL, P.TrtOptions.from_mapping({"opt_prefill_len": 300}), max_seq_len=256)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"max_batch": 2}, "max_batch is not a tensorrt option"),
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1"),
        ({"workspace_gib": -1}, "workspace_gib must be a number > 0"),
        ({"cuda_graphs": "yes"}, "cuda_graphs must be true or false"),
    ],
)
def test_bad_options_name_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        P.TrtOptions.from_mapping(table)


def test_an_unexpected_dynamic_axis_is_named():
    ranges = P.axis_ranges(P.BACKBONE_STEP, P.TrtOptions(), max_seq_len=16)
    with pytest.raises(ValueError, match=r"'past_key_values.0.key' axis 2 \('L'\) is dynamic"):
        P.profile_shapes(P.BACKBONE_STEP, {"past_key_values.0.key": (1, 2, "L", 16)}, ranges)


def test_shapes_read_from_an_onnx_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [1, "T", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["inputs_embeds"], ["y"])], "g", [x], [y]))
    onnx.save(model, tmp_path / "g.onnx")
    assert P.onnx_input_shapes(tmp_path / "g.onnx") == {"inputs_embeds": (1, "T", 8)}
    assert P.onnx_output_names(tmp_path / "g.onnx") == ["y"]
