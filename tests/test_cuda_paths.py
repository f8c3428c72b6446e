"""The CUDA paths, on a machine with an NVIDIA GPU (``gpu`` mark; each test skips here with the reason).

What only a GPU can show: our PyTorch CSM gives transformers' greedy codes on CUDA too, a whole
``say`` runs on CUDA and reports it, bf16 on CUDA stays within selective precision's stated bound,
cache clearing releases through ``torch.cuda.empty_cache``, and ONNX Runtime's CUDA provider gives
PyTorch's codes (where the installed onnxruntime has that provider). ``benchmarks/gpu_check.sh`` runs
these with the short csm-1b bench.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_core.generation import FrameEmbedder, SamplingParams, build_prompt, generate_frames  # noqa: E402
from csm_core.generation.frames import generate_codes  # noqa: E402
from csm_core.quality import code_agreement  # noqa: E402
from optimizer_pipelines import tiny_pipeline  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"),
]

GREEDY = SamplingParams(temperature=0.0, code_limit=2048)


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off: fp32 on CUDA means fp32 here, so greedy codes can be compared exactly."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return [1, *(b + 3 for b in text.encode()), 2]


def test_greedy_codes_on_cuda_match_transformers_on_cuda():
    from transformers import CsmForConditionalGeneration, MimiConfig

    from csm_model import convert
    from csm_model.model import Csm, CsmArgs
    from csm_pytorch.engines import TorchCsmEngines

    args = CsmArgs(  # the parity tests' tiny config: llama3 RoPE and GQA as in CSM-1B
        text_vocab_size=300, audio_vocab_size=67, num_codebooks=6,
        backbone_layers=2, backbone_dim=64, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=128,
        decoder_layers=2, decoder_dim=32, decoder_heads=4, decoder_kv_heads=1, decoder_mlp_dim=96, max_seq_len=96,
    )
    torch.manual_seed(1234)
    codec = MimiConfig(hidden_size=16, num_filters=4, codebook_dim=8, vector_quantization_hidden_dimension=8,
                       upsample_groups=16, num_hidden_layers=1, intermediate_size=16, num_attention_heads=2,
                       num_key_value_heads=2, num_quantizers=args.num_codebooks, codebook_size=64)
    hf = CsmForConditionalGeneration(convert.transformers_config_from_args(args, codec_config=codec)).eval()
    ours = Csm(args)
    ours.load_state_dict(convert.from_transformers_state_dict(hf.state_dict(), args))
    hf, ours = hf.cuda(), ours.eval().cuda()

    frames = 10
    prompt = build_prompt([], 0, "Say this on the GPU.", ByteTokenizer(), num_codebooks=args.num_codebooks,
                          max_frames=frames, max_positions=args.max_seq_len)
    embedder = FrameEmbedder.from_model(ours)
    assert embedder.device.type == "cuda"
    ours_frames = list(generate_frames(TorchCsmEngines(ours), embedder, prompt, max_frames=frames, sampling=SamplingParams(temperature=0.0),
                                       silence_guard=None))
    tokens, mask = prompt.tokens[None].cuda(), prompt.mask[None].cuda()
    with torch.no_grad():
        inputs_embeds = torch.where(mask[..., :1], hf.backbone_model.embed_tokens(tokens[..., :-1]),
                                    hf.embed_text_tokens(tokens[..., -1]))
        ref = hf.generate(inputs_embeds=inputs_embeds, max_new_tokens=frames, do_sample=False,
                          depth_decoder_do_sample=False)
    assert ref.shape[1] == len(ours_frames) == frames
    for index, frame in enumerate(ours_frames):
        assert frame.device.type == "cuda"
        assert torch.equal(frame[0].cpu(), ref[0, index].cpu()), f"frame {index} differs"


def test_say_runs_on_cuda_and_reports_it():
    with tiny_pipeline(device="cuda", generation={"temperature": 0.0, "max_new_frames": 6}) as pipeline:
        turn = pipeline.speak("Hello from the GPU.")
        tts = pipeline.stage("tts")
        assert str(tts.device).startswith("cuda") and tts.embedder.device.type == "cuda"
    assert turn.reply_codes.shape[1] == 6
    assert turn.audio.samples.size > 0 and abs(turn.audio.samples).max() > 0


def test_bf16_on_cuda_stays_within_the_stated_bound():
    from csm_core.config import Settings
    from csm_optimizers.selective_precision import teacher_forced_agreement
    from csm_pytorch.engines import TorchCsmEngines
    from csm_model.sources import load_csm_weights

    def loaded(plan):
        model = load_csm_weights(Settings(models={"preset": "tiny"}, device="cuda", component_precision=plan),
                                 "cuda").model
        return TorchCsmEngines(model), FrameEmbedder.from_model(model), model

    engines, embedder, model = loaded({})
    gen = torch.Generator().manual_seed(3)
    tokens = torch.zeros(1, 12, model.args.num_codebooks + 1, dtype=torch.long)
    tokens[..., -1] = torch.randint(0, 256, (1, 12), generator=gen)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[..., -1] = True
    prompt = (tokens.cuda(), mask.cuda())

    @torch.inference_mode()
    def prefill(engines, embedder):
        engines.backbone.reset()
        return engines.backbone.prefill(embedder.embed_frames(*prompt), torch.arange(12, device="cuda")[None])[1]

    reference_logits = prefill(engines, embedder)
    reference = generate_codes(engines, embedder, prompt, max_frames=4, sampling=GREEDY, silence_guard=None)
    engines, embedder, model = loaded({"backbone": "bf16", "decoder": "bf16"})
    assert model.part_dtypes()["backbone"] == torch.bfloat16 and model.part_dtypes()["heads"] == torch.float32
    logits = prefill(engines, embedder)
    error = float((logits - reference_logits).norm() / reference_logits.norm())
    assert 0.0 < error <= 2e-2  # the bound docs/optimizers.md states for bf16
    assert teacher_forced_agreement(engines, embedder, prompt, reference, GREEDY.code_limit) >= 0.9


def test_cache_clearing_on_cuda_releases_through_empty_cache_and_keeps_the_codes():
    generation = {"temperature": 0.0, "max_new_frames": 8}
    with tiny_pipeline(device="cuda", generation=generation) as plain:
        reference = plain.speak("Clear the caches.").reply_codes
    options = {"cache-clearing": {"min_interval": 1, "max_interval": 2}}
    with tiny_pipeline(device="cuda", generation=generation, optimizers=["cache-clearing"], options=options) as on:
        turn = on.speak("Clear the caches.")
    assert code_agreement(reference, turn.reply_codes) == 1.0
    summary = [event for event in turn.metrics.events if event.startswith("cache-clearing:")]
    assert len(summary) == 1 and "torch.cuda.empty_cache" in summary[0], turn.metrics.events


def test_onnxruntime_cuda_provider_gives_the_pytorch_codes():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'csm-multi[onnx]'")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider "
                    f"({', '.join(ort.get_available_providers())}): install onnxruntime-gpu")
    generation = {"temperature": 0.0, "max_new_frames": 6}
    with tiny_pipeline(device="cuda", generation=generation) as torch_run:
        reference = torch_run.speak("Same codes on both runtimes.").reply_codes
    with tiny_pipeline("onnxruntime", backend="onnxruntime", device="cuda", generation=generation) as ort_run:
        turn = ort_run.speak("Same codes on both runtimes.")
    assert code_agreement(reference, turn.reply_codes) == 1.0
