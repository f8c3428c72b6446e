"""Continuous batching (csm_core.generation.batch_session): a request's codes do not depend on its company.

Each request is generated alone with :func:`generate_codes` (one row) and then inside a
:class:`BatchSession` that it joins at some frame beside requests of other lengths, sampling parameters
and seeds; its codes must be identical (greedy, and seeded sampling). On the ``tiny`` and ``small`` presets
(random weights) and on the PyTorch engines.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_core.generation.batch_session import BatchSession, SessionFull  # noqa: E402
from csm_core.generation.embedder import FrameEmbedder  # noqa: E402
from csm_core.generation.frames import SilenceGuard, generate_codes  # noqa: E402
from csm_core.generation.prompt import build_prompt  # noqa: E402
from csm_core.generation.row_engines import BatchingUnsupported, OneRow, row_engines  # noqa: E402
from csm_core.generation.sampling import SamplingParams  # noqa: E402
from csm_core.stages import Segment  # noqa: E402
from csm_model.presets import build_preset  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, code_limit=2048)
WARM = SamplingParams(temperature=0.9, top_k=20, code_limit=2048)
HOT = SamplingParams(temperature=1.3, top_k=50, top_p=0.9, code_limit=2048)
GUARD = SilenceGuard(patience=4)


class Setup:
    def __init__(self, preset: str) -> None:
        torch.manual_seed(0)
        self.model, self.tokenizer = build_preset(preset, seed=3)
        self.embedder = FrameEmbedder.from_model(self.model)
        self.k = self.model.args.num_codebooks

    def prompt(self, text: str, context_frames: int = 0, max_frames: int = 12):
        context = []
        if context_frames:
            codes = torch.randint(1, 2048, (self.k, context_frames), generator=torch.Generator().manual_seed(7))
            context = [Segment(1, "before", codes)]
        return build_prompt(context, 0, text, self.tokenizer, num_codebooks=self.k, max_frames=max_frames,
                            max_positions=self.model.args.max_seq_len)

    def alone(self, prompt, max_frames, sampling, seed, guard=GUARD) -> torch.Tensor:
        engines = TorchCsmEngines(self.model, batch_size=1)
        return generate_codes(engines, self.embedder, prompt, max_frames=max_frames, sampling=sampling,
                              seed=seed, silence_guard=guard)[0]

    def session(self, rows: int, guard=GUARD) -> BatchSession:
        return BatchSession(TorchCsmEngines(self.model, batch_size=rows), self.embedder, rows, guard)


def drive(session: BatchSession, schedule: list[tuple[int, object, dict]]) -> list[torch.Tensor]:
    """Run ``schedule`` (join at step ``s``: prompt, add() keywords) to the end; each request's codes [K,F]."""
    pending = sorted(enumerate(schedule), key=lambda item: item[1][0])
    frames: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(schedule))}
    owner: dict[int, int] = {}
    step = 0
    while pending or len(session):
        while pending and pending[0][1][0] <= step and session.free:
            index, (_, prompt, kwargs) = pending.pop(0)
            owner[session.add(prompt, **kwargs)] = index
        for slot, frame in session.step().items():
            if frame is None:
                del owner[slot]
            else:
                frames[owner[slot]].append(frame)
        step += 1
        assert step < 500
    k = session.embedder.num_codebooks
    return [torch.stack(f, dim=1) if f else torch.zeros(k, 0, dtype=torch.long) for f in frames.values()]


_SETUPS: dict[str, Setup] = {}


def get_setup(preset: str) -> Setup:
    if preset not in _SETUPS:
        _SETUPS[preset] = Setup(preset)
    return _SETUPS[preset]


@pytest.fixture(scope="module", params=["tiny", "small"])
def setup(request):
    return get_setup(request.param)


def test_greedy_rows_joining_at_different_frames_equal_alone(setup):
    schedule = [
        (0, setup.prompt("hello there"), dict(max_frames=9, sampling=GREEDY)),
        (2, setup.prompt("a much longer sentence to speak", context_frames=6), dict(max_frames=12, sampling=GREEDY)),
        (3, setup.prompt("hi"), dict(max_frames=5, sampling=GREEDY)),
        (7, setup.prompt("late comer"), dict(max_frames=8, sampling=GREEDY)),  # takes a freed slot
    ]
    batched = drive(setup.session(3), schedule)
    for (_, prompt, kw), codes in zip(schedule, batched):
        expected = setup.alone(prompt, kw["max_frames"], GREEDY, 0)
        assert codes.shape[1] >= 1
        assert torch.equal(codes, expected)


def test_seeded_sampling_rows_equal_alone_with_their_seed(setup):
    schedule = [
        (0, setup.prompt("first one"), dict(max_frames=10, sampling=WARM, seed=11)),
        (1, setup.prompt("second, greedy", context_frames=3), dict(max_frames=7, sampling=GREEDY, seed=0)),
        (1, setup.prompt("third"), dict(max_frames=9, sampling=HOT, seed=12)),
        (4, setup.prompt("fourth comes later"), dict(max_frames=6, sampling=WARM, seed=13)),
    ]
    batched = drive(setup.session(4), schedule)
    for (_, prompt, kw), codes in zip(schedule, batched):
        expected = setup.alone(prompt, kw["max_frames"], kw["sampling"], kw["seed"])
        assert torch.equal(codes, expected)
    # and the seed matters: another seed gives other codes
    other = setup.alone(schedule[0][1], 10, WARM, 99)
    assert not torch.equal(other, batched[0])


def test_rows_end_on_their_own_silence_guard():
    setup = get_setup("tiny")
    guard = SilenceGuard(patience=1, silent_codes=None)  # ends a row as soon as codebook 0 repeats
    prompts = [setup.prompt("one"), setup.prompt("two two"), setup.prompt("three three three")]
    schedule = [(i, p, dict(max_frames=12, sampling=GREEDY)) for i, p in enumerate(prompts)]
    batched = drive(setup.session(3, guard), schedule)
    for (_, prompt, _kw), codes in zip(schedule, batched):
        assert torch.equal(codes, setup.alone(prompt, 12, GREEDY, 0, guard))


def test_cancelled_slot_is_reused_within_one_frame():
    setup = get_setup("tiny")
    session = setup.session(2)
    a = session.add(setup.prompt("cancel me"), max_frames=12, sampling=GREEDY)
    b = session.add(setup.prompt("keep going"), max_frames=12, sampling=GREEDY)
    waiting = setup.prompt("waiting request")
    with pytest.raises(SessionFull):
        session.add(waiting, max_frames=6, sampling=GREEDY)
    first = session.step()
    assert set(first) == {a, b} and all(f is not None for f in first.values())
    session.remove(a)  # the client went away
    c = session.add(waiting, max_frames=6, sampling=GREEDY)
    assert c == a  # the freed slot
    frames = {b: [first[b]], c: []}
    out = session.step()  # the very next frame already carries the waiting request
    assert out[c] is not None
    while len(session):
        for slot, frame in out.items():
            if frame is not None:
                frames[slot].append(frame)
        out = session.step()
    assert torch.equal(torch.stack(frames[c], 1), setup.alone(waiting, 6, GREEDY, 0))
    assert torch.equal(torch.stack(frames[b], 1), setup.alone(setup.prompt("keep going"), 12, GREEDY, 0))


def test_session_checks_and_single_row_fallback():
    setup = get_setup("tiny")
    session = setup.session(1)
    with pytest.raises(ValueError, match="max_frames"):
        session.add(setup.prompt("x"), max_frames=0)
    with pytest.raises(ValueError, match="budget"):
        session.add(setup.prompt("x"), max_frames=setup.model.args.max_seq_len)
    assert session.step() == {}

    class FixedEngines:  # a backend serving one request at a time (no per-row calls, fixed batch)
        def __init__(self, engines):
            self.backbone, self.decoder, self.batch_size = engines.backbone, engines.decoder, 1

        def for_batch(self, rows):
            return self if rows == 1 else None

    fixed = FixedEngines(TorchCsmEngines(setup.model, batch_size=1))
    assert isinstance(row_engines(fixed, 1), OneRow)
    with pytest.raises(BatchingUnsupported, match="one request at a time"):
        row_engines(fixed, 2)
    prompt = setup.prompt("one at a time")
    codes = drive(BatchSession(fixed, setup.embedder, 1, GUARD), [(0, prompt, dict(max_frames=6, sampling=WARM, seed=5))])
    assert torch.equal(codes[0], setup.alone(prompt, 6, WARM, 5))
