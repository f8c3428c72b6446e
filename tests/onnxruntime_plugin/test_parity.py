"""The ONNX graphs against the PyTorch engines: component outputs, greedy codes, Mimi audio."""

from __future__ import annotations

import copy

import pytest
import torch

from csm_core.generation.embedder import FrameEmbedder
from csm_core.generation.frames import generate_codes
from csm_core.generation.prompt import Segment, build_prompt
from csm_core.generation.sampling import SamplingParams

pytestmark = pytest.mark.slow  # the first test exports the tiny graphs (~40 s on 2 cores), once per session


def torch_engines(model):
    from csm_pytorch.model import TorchCsmEngines

    return TorchCsmEngines(copy.deepcopy(model))


def test_backbone_prefill_and_steps_match_pytorch(ort_csm, tiny_csm):
    engines, _ = ort_csm
    model = tiny_csm[0]
    ref = torch_engines(model)
    gen = torch.Generator().manual_seed(1)
    d = model.args.backbone_dim
    for engine in (engines, ref):
        engine.backbone.reset()
    embeds = torch.randn(1, 9, d, generator=gen) * 0.1
    positions = torch.arange(9)[None]
    got, want = engines.backbone.prefill(embeds, positions), ref.backbone.prefill(embeds, positions)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)
    for p in range(9, 13):  # steps read the cache the prefill (and earlier steps) wrote
        x = torch.randn(1, 1, d, generator=gen) * 0.1
        got, want = engines.backbone.step(x, torch.tensor([[p]])), ref.backbone.step(x, torch.tensor([[p]]))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


def test_depth_decoder_matches_pytorch_over_a_frame(ort_csm, tiny_csm):
    engines, _ = ort_csm
    model = tiny_csm[0]
    ref = torch_engines(model)
    gen = torch.Generator().manual_seed(2)
    d = model.args.backbone_dim
    for frame in range(2):  # the second frame checks reset
        engines.decoder.reset()
        ref.decoder.reset()
        x = torch.randn(1, 2, d, generator=gen) * 0.1
        torch.testing.assert_close(engines.decoder.step(x, torch.tensor([[0, 1]])),
                                   ref.decoder.step(x, torch.tensor([[0, 1]])), atol=1e-4, rtol=0)
        for i in range(2, model.args.num_codebooks):
            x = torch.randn(1, 1, d, generator=gen) * 0.1
            torch.testing.assert_close(engines.decoder.step(x, torch.tensor([[i]])),
                                       ref.decoder.step(x, torch.tensor([[i]])), atol=1e-4, rtol=0)


def test_greedy_generation_gives_identical_codes_with_context(ort_csm, tiny_csm):
    engines, _ = ort_csm
    model, tokenizer = tiny_csm
    k = model.args.num_codebooks
    context_codes = torch.randint(0, 2048, (k, 6), generator=torch.Generator().manual_seed(3))
    prompt = build_prompt([Segment(1, "how are you", context_codes)], 0, "fine thanks", tokenizer,
                          num_codebooks=k, max_frames=12, max_positions=model.args.max_seq_len)
    embedder = FrameEmbedder.from_model(model)
    greedy = SamplingParams(temperature=0.0)
    ours = generate_codes(engines, embedder, prompt, max_frames=12, sampling=greedy, silence_guard=None)
    want = generate_codes(torch_engines(model), embedder, prompt, max_frames=12, sampling=greedy, silence_guard=None)
    assert want.shape[-1] > 3
    assert torch.equal(ours, want)


def _snr_db(signal: torch.Tensor, reference: torch.Tensor) -> float:
    noise = (signal - reference).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise.clamp_min(1e-30)))


def test_mimi_decoder_audio_matches_pytorch_and_streams_like_batch(ort_mimi, tiny_mimi):
    from csm_pytorch.mimi import TorchMimi

    codec, _ = ort_mimi
    ref = TorchMimi(tiny_mimi)
    codes = torch.randint(0, codec.codebook_size, (1, 32, 5), generator=torch.Generator().manual_seed(4))
    batch = codec.decode(codes)
    assert batch.shape == (1, 1, 5 * codec.samples_per_frame)
    assert _snr_db(batch, ref.decode(codes)) > 40
    state, chunks = codec.init_state(1), []
    ref_state = ref.init_state(1)
    for f in range(5):
        pcm, state = codec.decode_step(codes[..., f : f + 1], state)
        ref_pcm, ref_state = ref.decode_step(codes[..., f : f + 1], ref_state)
        torch.testing.assert_close(pcm, ref_pcm, atol=1e-4, rtol=0)
        chunks.append(pcm)
    torch.testing.assert_close(torch.cat(chunks, dim=-1), batch, atol=1e-4, rtol=0)


def test_mimi_encode_matches_pytorch_and_says_it_runs_in_pytorch(ort_mimi, tiny_mimi):
    from csm_pytorch.mimi import TorchMimi

    codec, context = ort_mimi
    pcm = torch.randn(1, 1, 3 * codec.samples_per_frame, generator=torch.Generator().manual_seed(5)) * 0.3
    assert torch.equal(codec.encode(pcm), TorchMimi(tiny_mimi).encode(pcm))
    assert any("Mimi encoder" in event for event in context.events)
