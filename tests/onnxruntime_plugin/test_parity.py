"""The ONNX graphs against the PyTorch engines: component outputs, greedy codes, Mimi audio.

Every test runs on the ``tiny`` preset and on ``small`` (4 x 512 backbone, the CPU benchmark size;
exports in ~40 s): fp32 component outputs within 1e-4, identical greedy codes for a whole utterance
with a context segment, Mimi decoder audio above 40 dB SNR, streaming decode equal to batch decode.
"""

from __future__ import annotations

import copy

import pytest
import torch

from csm_core.generation.embedder import FrameEmbedder
from csm_core.generation.frames import generate_codes
from csm_core.generation.prompt import build_prompt
from csm_core.stages import Segment
from csm_core.generation.sampling import SamplingParams

pytestmark = pytest.mark.slow  # the first test of a preset exports its graphs (tiny ~40 s, small ~40 s on 2 cores)

PRESETS = ["tiny", "small"]


@pytest.fixture(params=PRESETS)
def preset(request) -> str:
    return request.param


@pytest.fixture
def csm_pair(preset_models, preset):
    """((Csm, tokenizer), OnnxCsmEngines) of the preset."""
    return preset_models.csm(preset), preset_models.ort_csm(preset)[0]


@pytest.fixture
def mimi_pair(preset_models, preset):
    """(transformers MimiModel, (OnnxMimi, its context)) of the preset."""
    return preset_models.mimi(preset), preset_models.ort_mimi(preset)


def torch_engines(model):
    from csm_pytorch.engines import TorchCsmEngines

    return TorchCsmEngines(copy.deepcopy(model))


def test_backbone_prefill_and_steps_match_pytorch(csm_pair):
    (model, _), engines = csm_pair
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


def test_depth_decoder_matches_pytorch_over_a_frame(csm_pair):
    (model, _), engines = csm_pair
    ref = torch_engines(model)
    gen = torch.Generator().manual_seed(2)
    d = model.args.backbone_dim
    for _frame in range(2):  # the second frame checks reset
        engines.decoder.reset()
        ref.decoder.reset()
        x = torch.randn(1, 2, d, generator=gen) * 0.1
        torch.testing.assert_close(engines.decoder.step(x, torch.tensor([[0, 1]])),
                                   ref.decoder.step(x, torch.tensor([[0, 1]])), atol=1e-4, rtol=0)
        for i in range(2, model.args.num_codebooks):
            x = torch.randn(1, 1, d, generator=gen) * 0.1
            torch.testing.assert_close(engines.decoder.step(x, torch.tensor([[i]])),
                                       ref.decoder.step(x, torch.tensor([[i]])), atol=1e-4, rtol=0)


def test_greedy_generation_gives_identical_codes_with_context(csm_pair):
    (model, tokenizer), engines = csm_pair
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


def test_mimi_decoder_audio_matches_pytorch_and_streams_like_batch(mimi_pair):
    from csm_model.mimi import TorchMimi

    mimi, (codec, _) = mimi_pair
    ref = TorchMimi(mimi)
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


def test_mimi_encode_on_its_graph_gives_the_codes_of_pytorch(mimi_pair):
    from csm_model.mimi import TorchMimi

    mimi, (codec, context) = mimi_pair
    pcm = torch.randn(1, 1, 3 * codec.samples_per_frame + 500, generator=torch.Generator().manual_seed(5)) * 0.3
    assert torch.equal(codec.encode(pcm), TorchMimi(mimi).encode(pcm))  # the end padded to whole frames, as there
    assert codec.encoder_session is not None and codec.encoder_artifact.path.is_file()  # it ran on ONNX Runtime
    assert not any("PyTorch" in event for event in context.events)
