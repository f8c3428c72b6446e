"""The ``fused-frame`` optimizer: switches the onnxruntime backend's fused frame graph on through its option.

Quality gate: the tiny preset through the whole pipeline, with and without the optimizer: identical codes
under greedy decoding and under seeded sampling (``code_agreement == 1.0``). The graph's own exactness
tests (settings, presets, plans) are in tests/onnxruntime_plugin/test_fused_frame.py. Other backends
are an error before any model loads.
"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from csm_core.errors import CsmError  # noqa: E402
from csm_core.quality import code_agreement  # noqa: E402
from optimizer_pipelines import tiny_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fused-frame-cache")


def pipeline(cache_dir, **settings):
    return tiny_pipeline("onnxruntime", backend="onnxruntime", cache_dir=cache_dir, **settings)


@pytest.mark.slow  # exports the tiny graphs
@pytest.mark.parametrize("generation", [{"temperature": 0.0}, {"temperature": 0.9, "top_k": 50, "seed": 4}],
                         ids=["greedy", "sampled"])
def test_codes_are_identical_with_and_without_the_optimizer(cache_dir, generation):
    from csm_onnxruntime.frame_decoder import OnnxFrameDecoder

    generation = {**generation, "max_new_frames": 6}
    with pipeline(cache_dir, generation=generation) as off:
        reference = off.speak("hi there").reply_codes
        assert off.stage("tts").engines.frame_decoder is None
    with pipeline(cache_dir, generation=generation, optimizers=["fused-frame"]) as on:
        assert on.settings.options["onnxruntime"]["fused_frame"] is True
        turn = on.speak("hi there")
        assert isinstance(on.stage("tts").engines.frame_decoder, OnnxFrameDecoder)
        assert any("fused-frame" in event and "fused_frame" in event for event in turn.metrics.events)
    assert reference.shape[-1] > 0 and code_agreement(reference, turn.reply_codes) == 1.0


def test_the_optimizer_on_pytorch_is_an_error_before_any_model_loads(cache_dir):
    with pytest.raises(CsmError, match=r"fused-frame optimizer runs on the onnxruntime backend.*runs on 'pytorch'"):
        tiny_pipeline(backend="pytorch", cache_dir=cache_dir, optimizers=["fused-frame"])


def test_the_optimizer_is_registered_as_exact():
    from csm_core.plugins import Plugins
    from csm_core.registry import Registry

    registry = Registry.collect(Plugins.from_environment({"CSM_LOAD_PLUGINS": "optimizers"}))
    record = registry.optimizer("fused-frame")
    assert record.effect == "exact" and "one graph call" in record.description
