"""Ragged prompts in one batch: left padding with per-row positions, driven through the PyTorch engines.

The claim under test (see :mod:`csm_core.generation.batch`): a row of a left-padded batch computes what
it computes alone, so under greedy decoding its codes are identical; rows end on their own.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forced_engines import Forcing  # noqa: E402
from csm_core.generation.batch import PromptBatch, as_prompt_batch, live_rows, stack_prompts  # noqa: E402
from csm_core.generation.embedder import FrameEmbedder  # noqa: E402
from csm_core.generation.frames import generate_codes, generate_frames  # noqa: E402
from csm_core.generation.prompt import build_prompt  # noqa: E402
from csm_core.stages import Segment  # noqa: E402
from csm_core.generation.sampling import SamplingParams  # noqa: E402
from csm_model.model import CsmArgs, random_csm  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402

ARGS = CsmArgs(
    text_vocab_size=300, audio_vocab_size=37, num_codebooks=4,
    backbone_layers=2, backbone_dim=32, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=64,
    decoder_layers=1, decoder_dim=16, decoder_heads=2, decoder_kv_heads=1, decoder_mlp_dim=32,
    max_seq_len=64,
)
GREEDY = SamplingParams(temperature=0.0)
MAX_FRAMES = 10


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return [1, *(b + 3 for b in text.encode()), 2]


@pytest.fixture(scope="module")
def model():
    return random_csm(ARGS, seed=5)


@pytest.fixture(scope="module")
def embedder(model):
    return FrameEmbedder.from_model(model)


def make_prompt(text: str, context_frames: int = 0):
    context = []
    if context_frames:
        codes = torch.randint(1, ARGS.audio_vocab_size, (ARGS.num_codebooks, context_frames),
                              generator=torch.Generator().manual_seed(context_frames))
        context = [Segment(1, "before", codes)]
    return build_prompt(context, 0, text, ByteTokenizer(), num_codebooks=ARGS.num_codebooks,
                        max_frames=MAX_FRAMES, max_positions=ARGS.max_seq_len)


@pytest.fixture(scope="module")
def prompts():
    """Three prompts of different lengths (4, 15 and 19 frames), one with audio context."""
    ragged = [make_prompt("hi"), make_prompt("a longer one"), make_prompt("ctx", context_frames=5)]
    assert len({len(p) for p in ragged}) == 3
    return ragged


def test_stack_prompts_left_pads_with_positions_after_each_rows_own(prompts):
    batch = stack_prompts(prompts)
    lengths = [len(p) for p in prompts]
    t = max(lengths)
    assert batch.tokens.shape == (3, t, ARGS.num_codebooks + 1) and batch.positions.shape == (3, t)
    assert batch.lengths.tolist() == lengths
    for row, (prompt, n) in enumerate(zip(prompts, lengths)):
        assert torch.equal(batch.tokens[row, t - n:], prompt.tokens)
        assert torch.equal(batch.mask[row, t - n:], prompt.mask)
        assert not batch.mask[row, : t - n].any()  # pad slots embed to zero
        assert batch.positions[row, t - n:].tolist() == list(range(n))
        assert batch.positions[row, : t - n].tolist() == list(range(n, t))
        assert sorted(batch.positions[row].tolist()) == list(range(t))  # every slot its own position


def test_prefill_of_a_padded_row_equals_the_row_alone(model, embedder, prompts):
    engines = TorchCsmEngines(model, batch_size=3)
    batch = stack_prompts(prompts)
    engines.backbone.reset()
    hidden, logits = engines.backbone.prefill(embedder.embed_frames(batch.tokens, batch.mask), batch.positions)
    for row, prompt in enumerate(prompts):
        alone = as_prompt_batch(prompt)
        engines.backbone.reset()
        h, lg = engines.backbone.prefill(embedder.embed_frames(alone.tokens, alone.mask), alone.positions)
        torch.testing.assert_close(hidden[row], h[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[row], lg[0], rtol=1e-5, atol=1e-6)


def test_ragged_batch_gives_each_row_its_unbatched_codes_under_greedy(model, embedder, prompts):
    alone = [
        generate_codes(TorchCsmEngines(model, batch_size=1), embedder, p,
                       max_frames=MAX_FRAMES, sampling=GREEDY, silence_guard=None)[0]
        for p in prompts
    ]
    batched = generate_codes(TorchCsmEngines(model, batch_size=3), embedder, stack_prompts(prompts),
                             max_frames=MAX_FRAMES, sampling=GREEDY, silence_guard=None)
    assert batched.shape == (3, ARGS.num_codebooks, MAX_FRAMES)
    assert len({tuple(c.flatten().tolist()) for c in alone}) == 3  # the rows really differ
    for row, codes in enumerate(alone):
        assert torch.equal(batched[row], codes), f"row {row} differs from its unbatched run"


def test_rows_end_at_their_own_frame_and_the_loop_stops_when_all_have(model, embedder, prompts):
    ends = [3, None, 6]  # row 0 ends at frame 3, row 2 at frame 6, row 1 would run to max_frames
    engines = Forcing(TorchCsmEngines(model, batch_size=3), ends, code=0)
    frames = list(generate_frames(engines, embedder, stack_prompts(prompts), max_frames=MAX_FRAMES,
                                  sampling=GREEDY, silence_guard=None))
    assert len(frames) == MAX_FRAMES
    live = torch.stack([live_rows(f) for f in frames])  # [F, B]
    assert live.sum(dim=0).tolist() == [3, MAX_FRAMES, 6]
    assert all(not live[f:, row].any() for row, f in ((0, 3), (2, 6)))  # once ended, never live again
    for row, prompt in enumerate(prompts):  # the frames before each row's end are its unbatched ones
        solo = Forcing(TorchCsmEngines(model, batch_size=1), [ends[row]], code=0)
        want = generate_codes(solo, embedder, prompt, max_frames=MAX_FRAMES, sampling=GREEDY, silence_guard=None)[0]
        got = torch.stack([f[row] for f in frames], dim=1)[:, : want.shape[1]]
        assert torch.equal(got, want)

    engines = Forcing(TorchCsmEngines(model, batch_size=3), [2, 4, 1], code=0)
    frames = list(generate_frames(engines, embedder, stack_prompts(prompts), max_frames=MAX_FRAMES,
                                  sampling=GREEDY, silence_guard=None))
    assert len(frames) == 4  # stops at the last row's end, not at max_frames
    assert torch.stack([live_rows(f) for f in frames]).sum(dim=0).tolist() == [2, 4, 1]


def test_budget_is_checked_per_row(model, embedder):
    short, long = make_prompt("hi"), make_prompt("x" * 40)  # 45 + 30 > 64 positions; 7 + 30 fits
    with pytest.raises(ValueError, match=r"row 1 of the batch: prompt of 45 positions \+ max_frames=30"):
        list(generate_frames(TorchCsmEngines(model, batch_size=2), embedder, stack_prompts([short, long]),
                             max_frames=30, sampling=GREEDY))


def test_a_batch_larger_than_the_cache_is_a_clear_error(model, embedder, prompts):
    with pytest.raises(ValueError, match="batch of 3 exceeds the cache's batch size 2"):
        list(generate_frames(TorchCsmEngines(model, batch_size=2), embedder, stack_prompts(prompts),
                             max_frames=2, sampling=GREEDY))


def test_bad_batches_are_clear_errors(prompts):
    with pytest.raises(ValueError, match="no prompts given"):
        stack_prompts([])
    narrow = (prompts[0].tokens[:, 1:], prompts[0].mask[:, 1:])
    with pytest.raises(ValueError, match=r"different frame widths \[4, 5\]"):
        stack_prompts([prompts[1], narrow])
    empty = (prompts[0].tokens[:0], prompts[0].mask[:0])
    with pytest.raises(ValueError, match="prompt 1 has tokens"):
        stack_prompts([prompts[0], empty])
    batch = stack_prompts(prompts)
    with pytest.raises(ValueError, match="every row needs 1..T"):
        PromptBatch(batch.tokens, batch.mask, batch.positions, batch.lengths + 100)
