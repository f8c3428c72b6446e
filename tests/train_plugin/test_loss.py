"""The training loss against transformers' ``CsmForConditionalGeneration`` on the same batch and labels.

A tiny transformers CSM with random weights is converted into our :class:`Csm` with
:mod:`csm_model.convert` (as tests/pytorch_plugin/test_model_parity.py does). The batch is built by
the training code (context segments, target text, target audio + end frame); transformers gets the
same frames embedded its own way and labels marked as its processor marks them: -100 for positions
not scored, -101 for frames the depth decoder skips (backbone only), codes for the rest, expanded to
[B,T,K] by the lines of ``CsmForConditionalGeneration._merge_input_ids_with_input_values``.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import CsmForConditionalGeneration, MimiConfig  # noqa: E402

from csm_core.generation import FrameEmbedder  # noqa: E402
from csm_model import convert  # noqa: E402
from csm_model.model import Csm, CsmArgs  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402
from csm_train.batch import collate  # noqa: E402
from csm_train.loss import decoder_frame_count, loss_sums  # noqa: E402
from csm_train.samples import Utterance, build_samples, sequence_frames  # noqa: E402

ARGS = CsmArgs(
    text_vocab_size=300, audio_vocab_size=67, num_codebooks=6,
    backbone_layers=2, backbone_dim=64, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=128,
    decoder_layers=2, decoder_dim=32, decoder_heads=4, decoder_kv_heads=1, decoder_mlp_dim=96,
    max_seq_len=160,
)
AUDIO_TOKEN = 10_000  # any value other than -100/-101 marks a frame scored by both parts


def tiny_codec(num_codebooks: int) -> MimiConfig:
    return MimiConfig(
        hidden_size=16, num_filters=4, codebook_dim=8, vector_quantization_hidden_dimension=8,
        upsample_groups=16, num_hidden_layers=1, intermediate_size=16, num_attention_heads=2,
        num_key_value_heads=2, num_quantizers=num_codebooks, codebook_size=64,
    )


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(1234)
    config = convert.transformers_config_from_args(ARGS, codec_config=tiny_codec(ARGS.num_codebooks))
    hf = CsmForConditionalGeneration(config).eval()
    ours = Csm(ARGS)
    ours.load_state_dict(convert.from_transformers_state_dict(hf.state_dict(), ARGS))
    return hf, ours.eval()


def utterances() -> list[Utterance]:
    """A conversation of three turns (the last two have context) and one utterance alone."""
    gen = torch.Generator().manual_seed(7)
    spec = [("a", 0, "Hello there.", 9), ("a", 1, "Hi! How are you?", 14), ("a", 0, "Fine.", 11), (None, 1, "Alone.", 17)]
    out = []
    for index, (conversation, speaker, text, frames) in enumerate(spec):
        ids = torch.tensor([1, *(b + 3 for b in f"[{speaker}]{text}".encode()), 2])
        codes = torch.randint(0, ARGS.audio_vocab_size, (ARGS.num_codebooks, frames), generator=gen)
        out.append(Utterance(f"k{index}", f"row {index}", conversation, ids, codes))
    return out


def batch_for(ratio: float, seed: int = 0):
    utts = utterances()
    samples = build_samples(utts, ARGS.max_seq_len)
    assert [len(s.context) for s in samples] == [0, 1, 2, 0]
    gen = torch.Generator().manual_seed(seed)
    return collate([sequence_frames(s, utts, ARGS.num_codebooks, ratio, gen) for s in samples])


def transformers_loss(hf, batch):
    """transformers' loss with 2-D labels (-100 / -101 / audio token) expanded as transformers does."""
    k = ARGS.num_codebooks
    tokens, mask = batch.tokens, batch.mask
    with torch.no_grad():
        text = hf.embed_text_tokens(tokens[..., -1])
        audio = hf.backbone_model.embed_tokens(tokens[..., :-1])
        inputs_embeds = torch.where(mask[..., :1], audio, text)
        labels = torch.full(batch.targets.shape, -100, dtype=torch.long)
        labels[batch.targets] = -101
        labels[batch.decoder] = AUDIO_TOKEN
        # transformers: labels_expanded = labels.repeat(K); audio frames get their codes; then -101 frames
        # keep codebook 0 only.
        expanded = labels.unsqueeze(-1).repeat(1, 1, k)
        scored = labels != -100
        expanded[scored] = tokens[..., :k][scored]
        ignore = (labels == -101).nonzero(as_tuple=True)
        expanded[ignore[0], ignore[1], 1:] = -100
        return hf(inputs_embeds=inputs_embeds, labels=expanded)


@pytest.mark.parametrize("ratio", [1.0, 1 / 16, 0.3])
def test_loss_equals_transformers(pair, ratio):
    hf, ours = pair
    batch = batch_for(ratio)
    with torch.no_grad():
        sums = loss_sums(ours, batch)
    ref = transformers_loss(hf, batch)
    assert abs(sums.backbone.item() / sums.backbone_count - ref.backbone_loss.item()) < 1e-5
    assert abs(sums.decoder.item() / sums.decoder_count - ref.depth_decoder_loss.item()) < 1e-5
    assert abs(sums.mean().item() - ref.loss.item()) < 1e-5


def test_only_target_frames_are_scored(pair):
    batch = batch_for(1.0)
    utts = utterances()
    # every target frame: the audio frames of each sample's last utterance plus its end frame
    assert batch.backbone_count == sum(u.frames + 1 for u in utts)
    for row, utterance in enumerate(utts):
        length = int(batch.mask[row].any(-1).sum())
        scored = batch.targets[row].nonzero().flatten().tolist()
        assert scored == list(range(length - utterance.frames - 1, length))  # the tail: no text, no context


def test_amortization_scores_exactly_the_chosen_frames(pair):
    """At 1/16 the depth decoder sees ceil(F/16) frames of each sample: its loss is the mean of the
    per-frame decoder losses of those frames, each computed here through the inference engines."""
    _, ours = pair
    batch = batch_for(1 / 16, seed=3)
    utts = utterances()
    k = ARGS.num_codebooks
    assert [int(batch.decoder[r].sum()) for r in range(len(utts))] == [
        decoder_frame_count(u.frames + 1, 1 / 16) for u in utts
    ] == [math.ceil((u.frames + 1) / 16) for u in utts]
    assert not (batch.decoder & ~batch.targets).any()
    with torch.no_grad():
        sums = loss_sums(ours, batch)
    engines = TorchCsmEngines(ours)
    embedder = FrameEmbedder.from_model(ours)
    per_code = []
    for row, t in batch.decoder.nonzero().tolist():
        tokens, mask = batch.tokens[row : row + 1, :t], batch.mask[row : row + 1, :t]
        engines.backbone.reset()
        hidden, _ = engines.backbone.prefill(embedder.embed_frames(tokens, mask), torch.arange(t)[None])
        codes = batch.tokens[row, t, :k]
        engines.decoder.reset()
        x = torch.cat((hidden.unsqueeze(1), embedder.embed_audio(0, codes[None, 0])), dim=1)
        positions = torch.arange(2)[None]
        for i in range(1, k):
            logits = engines.decoder.step(x, positions)
            per_code.append(torch.nn.functional.cross_entropy(logits.float(), codes[None, i]).item())
            x, positions = embedder.embed_audio(i, codes[None, i]), torch.full((1, 1), i + 1)
    assert sums.decoder_count == len(per_code)
    assert abs(sums.decoder.item() / sums.decoder_count - sum(per_code) / len(per_code)) < 1e-5


def test_gradients_flow_to_every_part_with_and_without_checkpointing(pair):
    _, ours = pair
    model = Csm(ARGS)
    model.load_state_dict(ours.state_dict())
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        loss_sums(model, batch_for(1 / 16), checkpointing=checkpointing).mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == []
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():  # recomputing activations changes no gradient
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
