"""Prompts of different lengths generating together, on the PyTorch engines of a tiny random CSM.

Rows of different lengths batch in a :class:`~csm_core.generation.batch_session.BatchSession` (each request
in a KV-cache row of its own, at its own positions; ``CsmSpeaker.speak_batch`` runs on it). The claims
under test: a row prefilled into its cache row computes what it computes alone, so under greedy decoding
its codes are identical; rows end on their own and the batch runs until the last has ended. Rows of one
length also run in lock step through :func:`generate_frames` (:class:`PromptBatch`).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forced_engines import Forcing  # noqa: E402
from csm_core.generation.batch import PromptBatch, as_prompt_batch  # noqa: E402
from csm_core.generation.batch_session import BatchSession  # noqa: E402
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


def run_session(engines, embedder, prompts, max_frames=MAX_FRAMES):
    """All prompts added to a session of len(prompts) rows at once, run to the end -> (per-step
    ``{slot: frame}`` of the live rows, each row's codes [K,F])."""
    session = BatchSession(engines, embedder, len(prompts), silence_guard=None)
    slots = [session.add(p, max_frames=max_frames, sampling=GREEDY) for p in prompts]
    assert slots == list(range(len(prompts)))
    steps = []
    while len(session):
        steps.append({slot: f for slot, f in session.step().items() if f is not None})
    steps = [step for step in steps if step]  # the last step only reports the exhausted rows
    codes = [torch.stack([step[slot] for step in steps if slot in step], dim=1) for slot in slots]
    return steps, codes


def test_prefill_of_a_row_equals_the_row_alone(model, embedder, prompts):
    batches = [as_prompt_batch(p) for p in prompts]
    alone = []
    for batch in batches:
        engines = TorchCsmEngines(model, batch_size=1)
        engines.backbone.reset()
        alone.append(engines.backbone.prefill(embedder.embed_frames(batch.tokens, batch.mask), batch.positions))
    engines = TorchCsmEngines(model, batch_size=3)
    for row, (batch, (h, lg)) in enumerate(zip(batches, alone)):  # each into its own cache row
        hidden, logits = engines.prefill_row(row, embedder.embed_frames(batch.tokens, batch.mask), batch.positions)
        torch.testing.assert_close(hidden[0], h[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[0], lg[0], rtol=1e-5, atol=1e-6)


def test_rows_of_different_lengths_get_their_unbatched_codes_under_greedy(model, embedder, prompts):
    alone = [
        generate_codes(TorchCsmEngines(model, batch_size=1), embedder, p,
                       max_frames=MAX_FRAMES, sampling=GREEDY, silence_guard=None)[0]
        for p in prompts
    ]
    steps, batched = run_session(TorchCsmEngines(model, batch_size=3), embedder, prompts)
    assert len(steps) == MAX_FRAMES and all(set(step) == {0, 1, 2} for step in steps)  # every step all rows
    assert len({tuple(c.flatten().tolist()) for c in alone}) == 3  # the rows really differ
    for row, codes in enumerate(alone):
        assert torch.equal(batched[row], codes), f"row {row} differs from its unbatched run"


def test_rows_end_at_their_own_frame_and_the_batch_stops_when_all_have(model, embedder, prompts):
    ends = [3, None, 6]  # row 0 ends at frame 3, row 2 at frame 6, row 1 would run to max_frames
    engines = Forcing(TorchCsmEngines(model, batch_size=3), ends, code=0)
    steps, codes = run_session(engines, embedder, prompts)
    assert len(steps) == MAX_FRAMES
    live = torch.tensor([[row in step for row in range(3)] for step in steps])  # [F, B]
    assert live.sum(dim=0).tolist() == [3, MAX_FRAMES, 6]
    assert all(not live[f:, row].any() for row, f in ((0, 3), (2, 6)))  # once ended, never live again
    for row, prompt in enumerate(prompts):  # the frames before each row's end are its unbatched ones
        solo = Forcing(TorchCsmEngines(model, batch_size=1), [ends[row]], code=0)
        want = generate_codes(solo, embedder, prompt, max_frames=MAX_FRAMES, sampling=GREEDY, silence_guard=None)[0]
        assert torch.equal(codes[row], want)

    engines = Forcing(TorchCsmEngines(model, batch_size=3), [2, 4, 1], code=0)
    steps, codes = run_session(engines, embedder, prompts)
    assert len(steps) == 4  # stops at the last row's end, not at max_frames
    assert [c.shape[1] for c in codes] == [2, 4, 1]


def test_budget_is_checked_per_row(model, embedder):
    short, long = make_prompt("hi"), make_prompt("x" * 40)  # 45 + 30 > 64 positions; 7 + 30 fits
    session = BatchSession(TorchCsmEngines(model, batch_size=2), embedder, 2)
    assert session.add(short, max_frames=30, sampling=GREEDY) == 0
    with pytest.raises(ValueError, match=r"prompt of 45 positions \+ max_frames=30"):
        session.add(long, max_frames=30, sampling=GREEDY)
    same = as_prompt_batch((long.tokens.expand(2, -1, -1), long.mask.expand(2, -1, -1)))  # lock step
    with pytest.raises(ValueError, match=r"row 0 of the batch: prompt of 45 positions \+ max_frames=30"):
        list(generate_frames(TorchCsmEngines(model, batch_size=2), embedder, same, max_frames=30, sampling=GREEDY))


def test_a_batch_larger_than_the_cache_is_a_clear_error(model, embedder, prompts):
    same = (prompts[0].tokens.expand(3, -1, -1), prompts[0].mask.expand(3, -1, -1))
    with pytest.raises(ValueError, match="batch of 3 exceeds the cache's batch size 2"):
        list(generate_frames(TorchCsmEngines(model, batch_size=2), embedder, same, max_frames=2, sampling=GREEDY))


def test_bad_batches_are_clear_errors(prompts):
    empty = (prompts[0].tokens[:0], prompts[0].mask[:0])
    with pytest.raises(ValueError, match="prompt is empty"):
        as_prompt_batch(empty)
    with pytest.raises(ValueError, match=r"must both be \[T,K\+1\] or \[B,T,K\+1\]"):
        as_prompt_batch((prompts[0].tokens, prompts[1].mask))
    batch = as_prompt_batch(prompts[0])
    with pytest.raises(ValueError, match="every row needs 1..T"):
        PromptBatch(batch.tokens, batch.mask, batch.positions, batch.lengths + 100)
