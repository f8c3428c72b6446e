"""The ``cuda-graphs`` optimizer and the PyTorch backend's static-buffer steps.

Here (CPU): the errors, the option plumbing, and that the static-buffer engines give the eager codes
when run without capture. On a CUDA machine (``gpu`` mark): captured graphs give identical codes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_core.errors import ConfigError, CsmError  # noqa: E402
from csm_core.generation.embedder import FrameEmbedder  # noqa: E402
from csm_core.generation.frames import generate_codes  # noqa: E402
from csm_core.generation.sampling import SamplingParams  # noqa: E402
from csm_core.pipeline import Pipeline  # noqa: E402
from csm_core.quality import code_agreement  # noqa: E402
from optimizer_pipelines import text_prompt, tiny_pipeline  # noqa: E402
from csm_pytorch.cuda_graphs import StaticStep, cuda_graph_engines  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402
from csm_model.presets import build_preset  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, code_limit=2048)


def pipeline(**settings) -> Pipeline:
    settings.setdefault("device", "auto")
    return tiny_pipeline("onnxruntime", **settings)


def prompt(args, frames: int = 10):
    return text_prompt(args, frames, seed=5)


def codes_of(engines, model, max_frames: int = 3) -> torch.Tensor:
    return generate_codes(
        engines, FrameEmbedder.from_model(model), prompt(model.args), max_frames=max_frames, sampling=GREEDY,
        silence_guard=None,
    )


def test_the_optimizer_on_a_cpu_device_is_an_error_naming_the_resolved_device():
    with pytest.raises(CsmError, match=r"needs a CUDA device, but device = 'cpu' resolved to 'cpu'"):
        pipeline(device="cpu", optimizers=["cuda-graphs"])


def test_the_optimizer_on_another_backend_is_an_error_pointing_at_its_own_option():
    with pytest.raises(CsmError, match=r"tts stage runs on 'onnxruntime'.*options\.tensorrt\.cuda_graphs"):
        pipeline(device="cpu", backend="onnxruntime", optimizers=["cuda-graphs"])


def test_the_backend_option_on_a_cpu_model_is_an_error_when_the_engines_are_built():
    with pipeline(device="cpu", options={"pytorch": {"cuda_graphs": True}}) as p:
        with pytest.raises(CsmError, match=r"CUDA graphs need a CUDA device, but the CSM runs on 'cpu'"):
            p.stage("tts")


def test_an_unknown_backend_option_names_the_table():
    with pipeline(device="cpu", options={"pytorch": {"cuda_graph": True}}) as p:
        with pytest.raises(ConfigError, match=r"(?s)\[options\.pytorch\].*cuda_graph"):
            p.stage("tts")


def test_static_buffer_engines_without_capture_give_the_eager_codes():
    model, _ = build_preset("tiny", 0)
    eager = codes_of(TorchCsmEngines(model), model)
    engines = cuda_graph_engines(model, capture=False)
    static = codes_of(engines, model)
    assert static.shape == eager.shape and code_agreement(eager.numpy(), static.numpy()) == 1.0
    assert len(engines.frame_decoder._steps) == 1  # greedy: every frame went through the whole-frame step
    assert not engines.decoder._steps  # ... and none through the per-step decoder


def test_sampling_decodes_step_by_step_with_the_eager_codes_for_the_same_seed():
    model, _ = build_preset("tiny", 0)
    sampling = SamplingParams(temperature=0.9, top_k=20, code_limit=2048)
    runs = []
    for engines in (TorchCsmEngines(model), cuda_graph_engines(model, capture=False)):
        runs.append(generate_codes(engines, FrameEmbedder.from_model(model), prompt(model.args), max_frames=3,
                                   sampling=sampling, seed=7, silence_guard=None))
    assert code_agreement(runs[0].numpy(), runs[1].numpy()) == 1.0
    assert not engines.frame_decoder.supports(sampling) and not engines.frame_decoder._steps and engines.decoder._steps


def test_static_step_checks_shapes_and_returns_copies_not_its_buffers():
    step = StaticStep(lambda x: (x * 2,), (torch.zeros(2, 3),), capture=False)
    first = step(torch.ones(2, 3))[0]
    second = step(torch.full((2, 3), 3.0))[0]
    assert torch.equal(first, torch.full((2, 3), 2.0)) and torch.equal(second, torch.full((2, 3), 6.0))
    with pytest.raises(ValueError, match="do not match the static buffers"):
        step(torch.ones(1, 3))


def test_capture_on_a_cpu_tensor_is_an_error():
    with pytest.raises(CsmError, match="CUDA graphs need a CUDA device"):
        StaticStep(lambda x: (x,), (torch.zeros(1),), capture=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; this machine has none")
def test_captured_graphs_give_identical_codes_and_the_optimizer_switches_them_on():
    model, _ = build_preset("tiny", 0, device="cuda")
    eager = codes_of(TorchCsmEngines(model), model, max_frames=6)
    graphed = codes_of(cuda_graph_engines(model, capture=True), model, max_frames=6)
    assert code_agreement(eager.cpu().numpy(), graphed.cpu().numpy()) == 1.0
    generation = {"temperature": 0.0, "max_new_frames": 4}
    with pipeline(device="cuda", generation=generation) as off:
        reference = off.speak("hi there").reply_codes
    with pipeline(device="cuda", generation=generation, optimizers=["cuda-graphs"]) as on:
        assert on.settings.options["pytorch"]["cuda_graphs"] is True
        from csm_pytorch.cuda_graphs import GraphedBackbone

        assert isinstance(on.stage("tts").engines.backbone, GraphedBackbone)
        assert code_agreement(reference, on.speak("hi there").reply_codes) == 1.0
        assert on.stage("tts").engines.frame_decoder._steps  # greedy frames ran as one captured graph
