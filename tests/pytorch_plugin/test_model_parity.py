"""Our Csm against transformers' CsmForConditionalGeneration with the same random weights.

Each config builds a random transformers model (with a tiny Mimi codec, which CSM does not use here),
converts its weights into our layout and checks backbone and depth-decoder logits and greedy generation.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from transformers import CsmConfig, CsmForConditionalGeneration, MimiConfig  # noqa: E402

from csm_core.components import BackboneEngine, DepthDecoderEngine  # noqa: E402
from csm_core.generation import FrameEmbedder, SamplingParams, Segment, build_prompt, generate_frames  # noqa: E402
from csm_model import convert  # noqa: E402
from csm_model.hf_compat import cache_kwargs, output_cache  # noqa: E402
from csm_model.model import Csm, CsmArgs  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402

CONFIGS = {
    # llama3 RoPE like CSM-1B; GQA in both transformers.
    "tiny": CsmArgs(
        text_vocab_size=300, audio_vocab_size=67, num_codebooks=6,
        backbone_layers=2, backbone_dim=64, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=128,
        decoder_layers=2, decoder_dim=32, decoder_heads=4, decoder_kv_heads=1, decoder_mlp_dim=96,
        max_seq_len=96,
    ),
    # Different shapes: plain multi-head backbone, 3 layers, odd widths, default (unscaled) RoPE.
    "other": CsmArgs(
        text_vocab_size=280, audio_vocab_size=41, num_codebooks=4,
        backbone_layers=3, backbone_dim=48, backbone_heads=3, backbone_kv_heads=3, backbone_mlp_dim=80,
        decoder_layers=1, decoder_dim=40, decoder_heads=2, decoder_kv_heads=2, decoder_mlp_dim=64,
        rope_type="default", rope_theta=10_000.0, max_seq_len=64, norm_eps=1e-6,
    ),
}


class ByteTokenizer:
    """UTF-8 bytes -> ids 3..258, with BOS 1 / EOS 2 around the text when ``add_bos_eos``."""

    def __init__(self, add_bos_eos: bool = True) -> None:
        self.add_bos_eos = add_bos_eos

    def encode(self, text: str) -> list[int]:
        ids = [b + 3 for b in text.encode()]
        return [1, *ids, 2] if self.add_bos_eos else ids


def tiny_codec(num_codebooks: int) -> MimiConfig:
    return MimiConfig(
        hidden_size=16, num_filters=4, codebook_dim=8, vector_quantization_hidden_dimension=8,
        upsample_groups=16, num_hidden_layers=1, intermediate_size=16, num_attention_heads=2,
        num_key_value_heads=2, num_quantizers=num_codebooks, codebook_size=64,
    )


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    """(args, transformers model, our model with its weights) for one config."""
    args = CONFIGS[request.param]
    torch.manual_seed(1234)
    config = convert.transformers_config_from_args(args, codec_config=tiny_codec(args.num_codebooks))
    hf = CsmForConditionalGeneration(config).eval()
    ours = Csm(args)
    ours.load_state_dict(convert.from_transformers_state_dict(hf.state_dict(), args))
    return args, hf, ours.eval()


def test_engines_implement_the_core_interfaces(pair):
    engines = TorchCsmEngines(pair[2])
    assert isinstance(engines.backbone, BackboneEngine)
    assert isinstance(engines.decoder, DepthDecoderEngine)
    assert engines.backbone.max_positions == pair[0].max_seq_len


def test_config_converts_back(pair):
    args, hf, _ = pair
    assert convert.args_from_transformers_config(hf.config) == args


def test_backbone_logits_match_prefill_and_steps(pair):
    args, hf, ours = pair
    engines = TorchCsmEngines(ours, batch_size=2)
    gen = torch.Generator().manual_seed(0)
    t = 9
    embeds = torch.randn(2, t, args.backbone_dim, generator=gen)
    hidden, logits = engines.backbone.prefill(embeds, torch.arange(t).expand(2, t))
    with torch.no_grad():
        out = hf.backbone_model(inputs_embeds=embeds, use_cache=True)
        ref = out.last_hidden_state[:, -1]
        torch.testing.assert_close(hidden, ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(logits, hf.lm_head(ref), atol=1e-4, rtol=0)
        cache = output_cache(out)
        for step in range(3):
            embed = torch.randn(2, 1, args.backbone_dim, generator=gen)
            hidden, logits = engines.backbone.step(embed, torch.full((2, 1), t + step))
            out = hf.backbone_model(inputs_embeds=embed, **cache_kwargs(hf.backbone_model, cache), use_cache=True)
            cache = output_cache(out)
            ref = out.last_hidden_state[:, -1]
            torch.testing.assert_close(hidden, ref, atol=1e-4, rtol=0)
            torch.testing.assert_close(logits, hf.lm_head(ref), atol=1e-4, rtol=0)


def test_depth_decoder_logits_match(pair):
    args, hf, ours = pair
    engines = TorchCsmEngines(ours, batch_size=3)
    embedder = FrameEmbedder.from_model(ours)
    gen = torch.Generator().manual_seed(1)
    k = args.num_codebooks
    backbone_hidden = torch.randn(3, args.backbone_dim, generator=gen)
    codes = torch.randint(0, args.audio_vocab_size, (3, k), generator=gen)
    with torch.no_grad():  # transformers, teacher-forced: logits of codebooks 1..K-1 at once
        input_ids = torch.nn.functional.pad(codes[:, : k - 1], (1, 0))  # position 0 is replaced by the hidden
        ref = hf.depth_decoder(input_ids=input_ids, backbone_last_hidden_state=backbone_hidden).logits
    engines.decoder.reset()
    x = torch.cat((backbone_hidden.unsqueeze(1), embedder.embed_audio(0, codes[:, 0])), dim=1)
    positions = torch.arange(2).expand(3, 2)
    for i in range(1, k):
        logits = engines.decoder.step(x, positions)
        torch.testing.assert_close(logits, ref[:, i - 1], atol=1e-4, rtol=0)
        x, positions = embedder.embed_audio(i, codes[:, i]), torch.full((3, 1), i + 1)


def _transformers_inputs_embeds(hf, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The prompt embedded the way transformers does: text via embed_text_tokens, frames via the backbone."""
    with torch.no_grad():
        text = hf.embed_text_tokens(tokens[..., -1])
        audio = hf.backbone_model.embed_tokens(tokens[..., :-1])
    return torch.where(mask[..., :1], audio, text)


@pytest.mark.parametrize("with_context", [False, True], ids=["text-only", "with-context"])
def test_greedy_generation_matches_transformers_frame_by_frame(pair, with_context):
    args, hf, ours = pair
    k, frames = args.num_codebooks, 12
    context = []
    if with_context:
        gen = torch.Generator().manual_seed(2)
        context = [Segment(0, "Earlier.", torch.randint(1, args.audio_vocab_size, (k, 5), generator=gen))]
    prompt = build_prompt(
        context, 1, "Say this.", ByteTokenizer(), num_codebooks=k, max_frames=frames, max_positions=args.max_seq_len
    )
    assert (len(prompt) > 20) == with_context
    engines = TorchCsmEngines(ours)
    embedder = FrameEmbedder.from_model(ours)
    greedy = SamplingParams(temperature=0.0)
    ours_frames = list(generate_frames(engines, embedder, prompt, max_frames=frames, sampling=greedy, silence_guard=None))

    inputs_embeds = _transformers_inputs_embeds(hf, prompt.tokens[None], prompt.mask[None])
    with torch.no_grad():
        ref = hf.generate(inputs_embeds=inputs_embeds, max_new_tokens=frames, do_sample=False, depth_decoder_do_sample=False)
    assert ref.shape == (1, frames, k)  # no end frame under these random weights: both ran to max_frames
    assert len(ours_frames) == frames
    for index, frame in enumerate(ours_frames):
        assert torch.equal(frame[0], ref[0, index]), f"frame {index} differs"


def test_save_pretrained_checkpoint_loads(pair, tmp_path):
    args, hf, ours = pair
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    loaded = convert.from_transformers_state_dict(state, args)
    expected = ours.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert convert.args_from_transformers_config(CsmConfig.from_pretrained(tmp_path)) == args
