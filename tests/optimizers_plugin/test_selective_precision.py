"""The ``selective-precision`` optimizer: its plan, the PyTorch backend carrying it out, and its quality gate.

Quality is measured against the float32 run on the same random weights and prompt, greedy:
- the relative L2 error of the codebook-0 logits after prefill;
- teacher-forced greedy agreement: every code predicted from the *reference* history (codes of the fp32
  run), so one flipped near-tie does not change all later predictions;
- free-running codes and decoded audio (code agreement, SNR, LSD), where they are meaningful (fp16).
The bounds asserted are the ones stated in :mod:`csm_optimizers.selective_precision`.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_core.config import Settings  # noqa: E402
from csm_core.errors import ConfigError, CsmError  # noqa: E402
from csm_core.generation.embedder import FrameEmbedder  # noqa: E402
from csm_core.generation.frames import generate_codes  # noqa: E402
from csm_core.generation.sampling import SamplingParams  # noqa: E402
from csm_core.pipeline import Pipeline  # noqa: E402
from csm_core.quality import compare_runs  # noqa: E402
from optimizer_pipelines import text_prompt, tiny_pipeline  # noqa: E402
from csm_optimizers.selective_precision import teacher_forced_agreement  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402
from csm_model.sources import csm_part_dtypes, load_csm_weights, load_mimi_model  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, code_limit=2048)  # codes the tiny/small Mimi can decode


def pipeline(**settings) -> Pipeline:
    return tiny_pipeline(**settings)


def loaded(preset: str, dtype: str | None):
    """(engines, embedder, model) of ``preset`` with the plan the optimizer sets for ``dtype`` (None: fp32)."""
    plan = {} if dtype is None else {"backbone": dtype, "decoder": dtype}
    settings = Settings(models={"preset": preset}, device="cpu", component_precision=plan)
    model = load_csm_weights(settings, "cpu").model
    return TorchCsmEngines(model), FrameEmbedder.from_model(model), model


@torch.inference_mode()
def prefill_logits(engines, embedder, prompt) -> torch.Tensor:
    tokens, mask = prompt
    engines.backbone.reset()
    return engines.backbone.prefill(embedder.embed_frames(tokens, mask), torch.arange(tokens.shape[1])[None])[1]


FRAMES = {"tiny": 4, "small": 2}


@pytest.fixture(scope="module")
def references():
    """preset -> (prompt, fp32 codebook-0 logits after prefill, fp32 greedy codes [1,K,F]), built once."""
    cache = {}

    def get(preset: str):
        if preset not in cache:
            engines, embedder, model = loaded(preset, None)
            prompt = text_prompt(model.args)
            logits = prefill_logits(engines, embedder, prompt)
            codes = generate_codes(engines, embedder, prompt, max_frames=FRAMES[preset], sampling=GREEDY, silence_guard=None)
            cache[preset] = (prompt, logits, codes)
        return cache[preset]

    return get


def measure(references, preset: str, dtype: str) -> dict:
    prompt, ref_logits, reference = references(preset)
    engines, embedder, model = loaded(preset, dtype)
    logits = prefill_logits(engines, embedder, prompt)
    return {
        "logits_dtype": logits.dtype,
        "logit_error": float((logits - ref_logits).norm() / ref_logits.norm()),
        "teacher_forced": teacher_forced_agreement(engines, embedder, prompt, reference, GREEDY.code_limit),
        "engines": engines,
        "embedder": embedder,
        "model": model,
    }


def test_teacher_forced_agreement_of_the_fp32_run_with_itself_is_one(references):
    prompt, _, reference = references("tiny")
    engines, embedder, _ = loaded("tiny", None)
    assert teacher_forced_agreement(engines, embedder, prompt, reference, GREEDY.code_limit) == 1.0
    shifted = (reference + 1) % GREEDY.code_limit  # every code wrong
    assert teacher_forced_agreement(engines, embedder, prompt, shifted, GREEDY.code_limit) < 0.1


# dtype -> (max logit error, min teacher-forced agreement): the bounds of the module docstring.
BOUNDS = {"bf16": (2e-2, 0.9), "fp16": (3e-3, 0.98)}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_tiny_preset_stays_within_the_stated_bound(references, dtype):
    m = measure(references, "tiny", dtype)
    parts = m["model"].part_dtypes()
    assert parts["backbone"] == parts["decoder"] == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert parts["heads"] == torch.float32 and m["logits_dtype"] == torch.float32  # logits stay fp32
    max_error, min_agreement = BOUNDS[dtype]
    assert 0.0 < m["logit_error"] <= max_error  # > 0: the plan really changed the arithmetic
    assert m["teacher_forced"] >= min_agreement


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_small_preset_stays_within_the_stated_bound(references, dtype):
    m = measure(references, "small", dtype)
    max_error, min_agreement = BOUNDS[dtype]
    assert 0.0 < m["logit_error"] <= max_error
    assert m["teacher_forced"] >= min_agreement


def test_fp16_on_tiny_gives_the_fp32_codes_and_audio(references):
    prompt, _, reference = references("tiny")
    engines, embedder, _ = loaded("tiny", "fp16")
    free = generate_codes(engines, embedder, prompt, max_frames=FRAMES["tiny"], sampling=GREEDY, silence_guard=None)
    from csm_model.mimi import TorchMimi

    codec = TorchMimi(load_mimi_model(Settings(models={"preset": "tiny"}), "cpu"))
    with torch.inference_mode():
        ref_audio, audio = codec.decode(reference).numpy(), codec.decode(free).numpy()
    report = compare_runs(reference.numpy(), free.numpy(), ref_audio, audio)
    assert report.code_agreement == 1.0 and report.snr_db == float("inf") and report.log_spectral_distance_db == 0.0


def test_optimizer_switches_the_plan_on_and_off_via_config():
    text, generation = "hi there", {"temperature": 0.0, "max_new_frames": 4}
    with pipeline(generation=generation) as off:
        assert off.stage("tts").engines.model.part_dtypes()["backbone"] == torch.float32
        off_turn = off.speak(text)
    settings = {"optimizers": ["selective-precision"], "options": {"selective-precision": {"dtype": "fp16"}}}
    with pipeline(generation=generation, **settings) as on:
        assert on.settings.component_precision == {"backbone": "fp16", "decoder": "fp16"}
        parts = on.stage("tts").engines.model.part_dtypes()
        assert (parts["backbone"], parts["decoder"], parts["heads"]) == (torch.float16, torch.float16, torch.float32)
        on_turn = on.speak(text)
    assert any("component_precision.backbone = 'fp16'" in e for e in on_turn.metrics.events)
    report = compare_runs(off_turn.reply_codes, on_turn.reply_codes, off_turn.audio.samples, on_turn.audio.samples)
    assert report.code_agreement == 1.0  # fp16 on tiny: the measured bound of the docstring


def test_default_dtype_is_bf16_and_a_bad_dtype_names_the_table():
    with pipeline(optimizers=["selective-precision"]) as p:
        assert p.settings.component_precision == {"backbone": "bf16", "decoder": "bf16"}
    with pytest.raises(ConfigError, match=r"(?s)options\.selective-precision.*dtype"):
        pipeline(optimizers=["selective-precision"], options={"selective-precision": {"dtype": "int8"}})


def test_unknown_precision_component_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown component 'backbon'.*backbone, decoder, codec"):
        Settings(component_precision={"backbon": "bf16"})


def test_precision_of_resolves_part_then_csm_then_precision():
    s = Settings(precision="fp16", component_precision={"csm": "bf16", "decoder": "fp32"})
    assert (s.precision_of("backbone"), s.precision_of("decoder"), s.precision_of("codec")) == ("bf16", "fp32", "fp32")
    assert s.precision_of("llm") == "fp16"


def test_a_precision_the_device_cannot_run_is_an_error_unless_fallback(monkeypatch):
    import csm_model.sources as sources

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla T4")
    settings = Settings(component_precision={"backbone": "bf16"})
    with pytest.raises(CsmError, match=r"backbone is bf16.*compute capability >= 8.0.*Tesla T4.*7\.5"):
        csm_part_dtypes(settings, "cuda")
    reports = []
    plan = sources.csm_part_dtypes(settings.model_copy(update={"allow_fallback": True}), "cuda", reports.append)
    assert plan == {"backbone": torch.float32, "decoder": torch.float32}
    assert reports and "running it in fp32" in reports[0]


def test_a_reduced_codec_precision_is_an_error_on_pytorch_not_ignored():
    with pipeline(component_precision={"codec": "fp16"}) as p:
        with pytest.raises(CsmError, match="pytorch backend runs the Mimi codec in fp32 only"):
            p.stage("tts")
