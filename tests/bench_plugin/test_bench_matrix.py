"""The benchmark matrix: cells parsed from `csmctl bench` strings, and bad input named."""

from __future__ import annotations

import pytest

from csm_bench.matrix import BenchInputError, Cell, parse_matrix, parse_optimizer_sets
from csm_core.errors import UnknownNameError

PRESETS = ("tiny", "small", "csm-1b")


def test_matrix_is_the_product_with_baselines_first():
    cells = parse_matrix("pytorch, onnxruntime", "cache-clearing,none,a+b", "small,tiny", PRESETS)
    assert [c.id for c in cells] == [
        "small/pytorch/none", "small/pytorch/cache-clearing", "small/pytorch/a+b",
        "small/onnxruntime/none", "small/onnxruntime/cache-clearing", "small/onnxruntime/a+b",
        "tiny/pytorch/none", "tiny/pytorch/cache-clearing", "tiny/pytorch/a+b",
        "tiny/onnxruntime/none", "tiny/onnxruntime/cache-clearing", "tiny/onnxruntime/a+b",
    ]
    assert cells[2].optimizers == ("a", "b") and cells[2].baseline() == cells[0] and cells[0].is_baseline


def test_optimizer_sets_keep_the_order_of_names_within_a_set():
    assert parse_optimizer_sets("none,b+a") == [((), ()), (("b", "a"), ())]
    assert Cell("tiny", "pytorch", ("b", "a")).optimizer_label == "b+a"


def test_an_optimizer_takes_options_per_cell_so_one_run_compares_its_settings():
    cells = parse_matrix("pytorch", "none,weight-quantization:bits=8,weight-quantization:bits=4:block_size=64,a+b:x=true",
                         "small", PRESETS)
    assert [c.id for c in cells] == ["small/pytorch/none", "small/pytorch/weight-quantization:bits=8",
                                     "small/pytorch/weight-quantization:bits=4:block_size=64", "small/pytorch/a+b:x=true"]
    assert cells[1].optimizers == cells[2].optimizers == ("weight-quantization",)
    assert cells[2].option_overrides == {"options.weight-quantization.bits": 4,
                                         "options.weight-quantization.block_size": 64}
    assert cells[3].option_overrides == {"options.b.x": True} and cells[3].baseline() == cells[0]


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(UnknownNameError) as error:
        parse_matrix("pytorch", "none", "small,huge", PRESETS)
    assert "'huge'" in str(error.value) and "csm-1b, small, tiny" in str(error.value)


@pytest.mark.parametrize(
    ("backends", "optimizers", "presets", "words"),
    [
        ("pytorch,", "none", "small", ["--backends", "empty"]),
        ("pytorch,pytorch", "none", "small", ["--backends", "'pytorch'", "more than once"]),
        ("pytorch", "none+cache-clearing", "small", ["--optimizers", "'none' alone"]),
        ("pytorch", "a+", "small", ["--optimizers", "empty name"]),
        ("pytorch", "a+a", "small", ["--optimizers", "twice"]),
        ("pytorch", "a+b,a+b", "small", ["--optimizers", "more than once"]),
        ("pytorch", "none", " ", ["--presets"]),
        ("pytorch", "a:bits", "small", ["--optimizers", "'bits' is not key=value"]),
        ("pytorch", "a:bits=4:bits=8", "small", ["--optimizers", "twice"]),
        ("pytorch", "none:bits=4", "small", ["--optimizers", "'none' alone"]),
        ("pytorch", "a:bits=4,a:bits=4", "small", ["--optimizers", "more than once"]),
    ],
)
def test_bad_matrix_strings_name_the_option_and_value(backends, optimizers, presets, words):
    with pytest.raises(BenchInputError) as error:
        parse_matrix(backends, optimizers, presets, PRESETS)
    for word in words:
        assert word in str(error.value)


def test_the_transformers_reference_gets_its_baseline_only():
    cells = parse_matrix("pytorch,transformers-reference", "none,cache-clearing", "small", PRESETS)
    assert [c.id for c in cells] == ["small/pytorch/none", "small/pytorch/cache-clearing",
                                     "small/transformers-reference/none"]
