"""The ``weight-quantization`` optimizer: its settings, both backends carrying it out, and its quality gate.

Every engine here comes from a real pipeline (the optimizer listed in ``Settings.optimizers``, plugins
loaded through their entry points): PyTorch's quantized CPU kernels, ONNX Runtime sessions over graphs
with ``MatMulNBits`` nodes. Quality is measured against the float32 pipeline of the same backend, on the
same random weights and prompt, greedy:

- the relative L2 error of the codebook-0 logits after prefill;
- teacher-forced greedy agreement (:func:`csm_optimizers.selective_precision.teacher_forced_agreement`);
- free-running codes and their decoded audio (code agreement, SNR, LSD): measured and required to be
  finite numbers, no bound (random weights, see docs/optimizers.md).

The bounds asserted are :data:`csm_optimizers.weight_quantization.BOUNDS`, stated in the module docstring
and docs/optimizers.md.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from csm_core.config import Settings  # noqa: E402
from csm_core.errors import ConfigError, CsmError  # noqa: E402
from csm_core.generation.frames import generate_codes  # noqa: E402
from csm_core.generation.sampling import SamplingParams  # noqa: E402
from csm_core.quality import compare_runs  # noqa: E402
from optimizer_pipelines import text_prompt, tiny_pipeline  # noqa: E402
from csm_optimizers.selective_precision import teacher_forced_agreement  # noqa: E402
from csm_optimizers.weight_quantization import BOUNDS  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, code_limit=2048)  # codes the tiny/small Mimi can decode
FRAMES = {"tiny": 4, "small": 2}
NAME = "weight-quantization"


def pipeline(backend: str, preset: str, cache_dir, bits: int | None = None, **settings):
    """A pipeline of ``preset`` on ``backend`` (CPU), with the optimizer at ``bits`` when given."""
    extra = ("onnxruntime",) if backend == "onnxruntime" else ()
    if bits is not None:
        settings.setdefault("optimizers", [NAME])
        settings.setdefault("options", {NAME: {"bits": bits}})
    return tiny_pipeline(*extra, backend=backend, models={"preset": preset}, cache_dir=cache_dir, **settings)


@torch.inference_mode()
def prefill_logits(stage, prompt) -> torch.Tensor:
    tokens, mask = prompt
    stage.engines.backbone.reset()
    return stage.engines.backbone.prefill(stage.embedder.embed_frames(tokens, mask), torch.arange(tokens.shape[1])[None])[1]


@torch.inference_mode()
def free_running(stage, prompt, frames: int):
    codes = generate_codes(stage.engines, stage.embedder, prompt, max_frames=frames, sampling=GREEDY, silence_guard=None)
    return codes, stage.codec.decode(codes).numpy()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("weight-quantization-cache")


@pytest.fixture(scope="module")
def references(cache_dir):
    """(preset, backend) -> (prompt, fp32 logits after prefill, fp32 greedy codes, their audio), built once."""
    cache = {}

    def get(preset: str, backend: str):
        if (preset, backend) not in cache:
            with pipeline(backend, preset, cache_dir) as p:
                stage = p.stage("tts")
                prompt = text_prompt(stage.args)
                cache[preset, backend] = (prompt, prefill_logits(stage, prompt), *free_running(stage, prompt, FRAMES[preset]))
        return cache[preset, backend]

    return get


def measure(references, cache_dir, preset: str, backend: str, bits: int) -> dict:
    prompt, ref_logits, ref_codes, ref_audio = references(preset, backend)
    with pipeline(backend, preset, cache_dir, bits) as p:
        stage = p.stage("tts")
        logits = prefill_logits(stage, prompt)
        codes, audio = free_running(stage, prompt, FRAMES[preset])
        return {
            "logit_error": float((logits - ref_logits).norm() / ref_logits.norm()),
            "teacher_forced": teacher_forced_agreement(stage.engines, stage.embedder, prompt, ref_codes, GREEDY.code_limit),
            "report": compare_runs(ref_codes.numpy(), codes.numpy(), ref_audio, audio),
            "stage": stage,
            "settings": p.settings,
        }


def check_bound(m: dict, preset: str, bits: int) -> None:
    max_error, min_agreement = BOUNDS[bits][preset]
    assert 0.0 < m["logit_error"] <= max_error  # > 0: the weights really changed
    assert m["teacher_forced"] >= min_agreement
    report = m["report"]
    assert 0.0 <= report.code_agreement <= 1.0
    assert not math.isnan(report.snr_db) and math.isfinite(report.log_spectral_distance_db)


# -- settings and the optimizer's switch ----------------------------------------------------------------

def test_the_optimizer_sets_the_neutral_weight_quantization_setting():
    with tiny_pipeline(optimizers=[NAME], options={NAME: {"bits": 4, "block_size": 32}}) as p:
        for part in ("backbone", "decoder"):
            q = p.settings.weight_quantization_of(part)
            assert (q.bits, q.block_size) == (4, 32)
    with tiny_pipeline(optimizers=[NAME], options={NAME: {"parts": ["decoder"]}}) as p:
        assert p.settings.weight_quantization_of("backbone") is None
        assert p.settings.weight_quantization_of("decoder").bits == 8  # the default
    s = Settings(weight_quantization={"csm": {"bits": 4}, "decoder": {"bits": 8}})
    assert (s.weight_quantization_of("backbone").bits, s.weight_quantization_of("decoder").bits) == (4, 8)


@pytest.mark.parametrize("bits", [3, 16, 2])
def test_bits_other_than_8_or_4_is_an_error_naming_the_supported_ones(bits):
    with pytest.raises(ConfigError, match=r"(?s)options\.weight-quantization.*bits.*8 or 4"):
        tiny_pipeline(optimizers=[NAME], options={NAME: {"bits": bits}})
    with pytest.raises(ValueError, match="4 or 8"):
        Settings(weight_quantization={"csm": {"bits": bits}})


def test_unsupported_combinations_are_errors_naming_what_is_supported(tmp_path):
    with pytest.raises(CsmError, match="runs on the pytorch and onnxruntime backends.*'tensorrt'"):
        tiny_pipeline("tensorrt", backend="tensorrt", optimizers=[NAME])
    with pytest.raises(CsmError, match="component_precision of the CSM backbone is bf16.*do not combine"):
        tiny_pipeline(optimizers=["selective-precision", NAME])
    with pytest.raises(ValueError, match=r"(?s)block_size.*power of two"):
        Settings(weight_quantization={"csm": {"bits": 4, "block_size": 48}})
    # set directly (no optimizer): the backends check what they can run
    with tiny_pipeline(component_precision={"csm": "bf16"}, weight_quantization={"csm": {"bits": 8}}) as p:
        with pytest.raises(CsmError, match="computes in torch.bfloat16.*bits = 8.*bits = 4"):
            p.stage("tts")
    with tiny_pipeline(weight_quantization={"csm": {"bits": 4, "block_size": 16}}) as p:
        with pytest.raises(CsmError, match="block_size 16.*block_size 32, 64, 128 or 256"):
            p.stage("tts")
    from csm_export.precision import PrecisionPlan
    from csm_export.quantization import WeightPlan

    with pytest.raises(ValueError, match="bits=3.*8 or 4"):
        WeightPlan(3)
    with pytest.raises(ValueError, match="precision is fp16.*do not combine"):
        PrecisionPlan("fp16", weights=WeightPlan(8))


# -- the backends carry it out ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_pytorch_linear_layers_really_are_quantized(bits, cache_dir):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from csm_pytorch.quantization import Int4Linear

    with pipeline("pytorch", "tiny", cache_dir, bits) as p:
        model = p.stage("tts").engines.model
        kind = DynamicLinear if bits == 8 else Int4Linear
        for part in (model.backbone, model.decoder):
            linears = [m for m in part.layers.modules() if isinstance(m, (torch.nn.Linear, DynamicLinear, Int4Linear))]
            assert len(linears) == 7 * len(part.layers) and all(isinstance(m, kind) for m in linears)
        if bits == 8:
            weight = model.backbone.layers[0].attn.q_proj.weight()
            assert weight.dtype == torch.qint8 and weight.qscheme() == torch.per_channel_affine
        else:
            layer = model.decoder.layers[0].mlp.up_proj
            assert layer.packed.dtype == torch.uint8 and layer.packed.numel() * 2 == layer.in_features * layer.out_features
            assert layer.group_size == min(128, layer.in_features)
        # embeddings, heads and norms stay float32 modules
        for head in (model.codebook0_head, model.projection):
            assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32
        assert model.audio_head.dtype == torch.float32 and model.backbone.norm.weight.dtype == torch.float32


@pytest.mark.parametrize("bits", [8, 4])
def test_onnxruntime_graphs_hold_matmulnbits_nodes(bits, cache_dir):
    import onnx

    from csm_export.quantization import quantized_layers

    with pipeline("onnxruntime", "tiny", cache_dir, bits) as p:
        engines = p.stage("tts").engines
        args = p.stage("tts").args
        for artifact in engines.artifacts:
            model = onnx.load_model(str(artifact.path))
            graph = model.graph
            layers = quantized_layers(model)
            n_layers = args.decoder_layers if "decoder" in artifact.path.name else args.backbone_layers
            assert len(layers) == 7 * n_layers
            assert {(q["bits"], q["block_size"]) for q in layers} == {(bits, 128)}
            assert "com.microsoft" in {o.domain for o in model.opset_import}
            floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
            # the one float weight left multiplied is the head: codebook0_head (backbone) / projection (decoder)
            float_matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in floats]
            assert len(float_matmuls) == 1


def test_the_artifact_key_differs_between_fp32_int8_and_int4(tmp_path):
    from csm_export.artifacts import weights_hash
    from csm_export.specs import csm_spec
    from csm_export.precision import plan_for
    from csm_model.presets import build_preset

    model = build_preset("tiny", 0)[0]
    whash = weights_hash(model)
    plans = {
        "fp32": Settings(),
        "int8": Settings(weight_quantization={"csm": {"bits": 8}}),
        "int4": Settings(weight_quantization={"csm": {"bits": 4}}),
        "int4-g32": Settings(weight_quantization={"csm": {"bits": 4, "block_size": 32}}),
    }
    for graph in ("backbone_step", "decoder"):
        part = "decoder" if graph == "decoder" else "backbone"
        keys = {name: csm_spec(model, graph, whash, 1, plan_for(s, part)).key() for name, s in plans.items()}
        assert len(set(keys.values())) == len(plans)
        assert keys["fp32"] == csm_spec(model, graph, whash, 1).key()  # unquantized keys are unchanged


def test_optimizer_switches_on_through_settings_on_both_backends(cache_dir):
    text, generation = "hi there", {"temperature": 0.0, "max_new_frames": 3}
    for backend in ("pytorch", "onnxruntime"):
        with pipeline(backend, "tiny", cache_dir, 8, generation=generation) as p:
            turn = p.speak(text)
        assert any("weight_quantization.backbone" in e for e in turn.metrics.events)
        assert turn.reply_codes.shape[-1] > 0 and turn.audio.samples.size > 0


# -- the quality gate ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
@pytest.mark.parametrize("bits", [8, 4])
def test_tiny_preset_stays_within_the_stated_bound(references, cache_dir, backend, bits):
    check_bound(measure(references, cache_dir, "tiny", backend, bits), "tiny", bits)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
@pytest.mark.parametrize("bits", [8, 4])
def test_small_preset_stays_within_the_stated_bound(references, cache_dir, backend, bits):
    check_bound(measure(references, cache_dir, "small", backend, bits), "small", bits)


# -- the floor -------------------------------------------------------------------------------------------

def test_the_floor_reads_quantized_weights_at_their_size():
    from csm_bench.floor import floor_for, norm_parameters_read_per_frame, parameters_read_per_frame, weight_format
    from csm_model.presets import get_preset

    args = get_preset("small").args
    fp32 = floor_for(args, "fp32", 1e10, "given")
    params, norms = parameters_read_per_frame(args), norm_parameters_read_per_frame(args)
    linear = params["backbone"] + params["decoder"] - norms["backbone"] - norms["decoder"]
    for bits, per_weight in ((8, 1 + 4 / 128), (4, 0.5 + 4 / 128)):
        fmt = weight_format(bits, 128)
        floor = floor_for(args, {"backbone": fmt, "decoder": fmt, "heads": "fp32"}, 1e10, "given")
        assert floor.bytes_per_frame == round(fp32.bytes_per_frame - linear * (4 - per_weight))
        assert floor.precision == f"backbone {fmt}, decoder {fmt}, heads fp32"
    with pytest.raises(ValueError, match="heads='int8-g128'"):
        floor_for(args, {"backbone": "fp32", "decoder": "fp32", "heads": "int8-g128"}, 1e10, "given")
