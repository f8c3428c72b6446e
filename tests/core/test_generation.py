"""The shared frame loop, driven through the PyTorch engines of a tiny random CSM.

End-of-speech and silence are produced by pushing the real engines' logits towards chosen codes from a
chosen frame on (``Forcing``): the model still runs, the loop's reaction is what is tested.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forced_engines import Forcing  # noqa: E402
from csm_core.generation import (  # noqa: E402
    FrameEmbedder,
    SamplingParams,
    Segment,
    SilenceGuard,
    build_prompt,
    generate_codes,
    generate_frames,
)
from csm_model.model import CsmArgs, random_csm  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402

ARGS = CsmArgs(
    text_vocab_size=300, audio_vocab_size=37, num_codebooks=4,
    backbone_layers=2, backbone_dim=32, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=64,
    decoder_layers=1, decoder_dim=16, decoder_heads=2, decoder_kv_heads=1, decoder_mlp_dim=32,
    max_seq_len=64,
)
GREEDY = SamplingParams(temperature=0.0)


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return [1, *(b + 3 for b in text.encode()), 2]


@pytest.fixture(scope="module")
def model():
    return random_csm(ARGS, seed=11)


@pytest.fixture
def engines(model):
    return TorchCsmEngines(model, batch_size=2)


@pytest.fixture(scope="module")
def embedder(model):
    return FrameEmbedder.from_model(model)


@pytest.fixture(scope="module")
def prompt():
    context = [Segment(0, "before", torch.randint(1, ARGS.audio_vocab_size, (ARGS.num_codebooks, 3), generator=torch.Generator().manual_seed(0)))]
    return build_prompt(context, 1, "now", ByteTokenizer(), num_codebooks=ARGS.num_codebooks, max_frames=20, max_positions=ARGS.max_seq_len)


def run(engines, embedder, prompt, **kwargs) -> list[torch.Tensor]:
    kwargs.setdefault("sampling", GREEDY)
    kwargs.setdefault("silence_guard", None)
    kwargs.setdefault("max_frames", 12)
    return list(generate_frames(engines, embedder, prompt, **kwargs))


def test_embed_frames_sums_present_embeddings(model, embedder, prompt):
    tokens, mask = prompt.tokens[None], prompt.mask[None]
    got = embedder.embed_frames(tokens, mask)[0]
    k, v = ARGS.num_codebooks, ARGS.audio_vocab_size
    for t in range(tokens.shape[1]):
        want = torch.zeros(ARGS.backbone_dim)
        for c in range(k):
            if mask[0, t, c]:
                want += model.audio_embeddings.weight[c * v + tokens[0, t, c]]
        if mask[0, t, k]:
            want += model.text_embeddings.weight[tokens[0, t, k]]
        torch.testing.assert_close(got[t], want.detach())
    codes = torch.randint(0, v, (2, k))
    frames = torch.cat((codes, torch.zeros(2, 1, dtype=torch.long)), dim=1)[:, None]
    audio_mask = torch.tensor([True] * k + [False]).expand(2, 1, k + 1)
    torch.testing.assert_close(embedder.embed_codes(codes), embedder.embed_frames(frames, audio_mask))


def test_runs_to_max_frames_and_yields_k_codes_per_frame(engines, embedder, prompt):
    frames = run(engines, embedder, prompt, max_frames=7)
    assert len(frames) == 7
    assert all(f.shape == (1, ARGS.num_codebooks) and f.dtype == torch.long for f in frames)
    assert all(not (f == 0).all() for f in frames)  # no end frame from this model: it really ran to the limit
    assert len({tuple(f[0].tolist()) for f in frames}) > 1


def test_streamed_frames_equal_generate_codes(engines, embedder, prompt):
    kwargs = dict(max_frames=9, sampling=SamplingParams(temperature=1.0, top_k=10), seed=3, silence_guard=None)
    codes = generate_codes(engines, embedder, prompt, **kwargs)
    stream = generate_frames(engines, embedder, prompt, **kwargs)
    first = [next(stream) for _ in range(4)]  # a consumer taking frames as they come
    rest = list(stream)
    assert codes.shape == (1, ARGS.num_codebooks, 9)
    assert torch.equal(torch.stack(first + rest, dim=2), codes)


def test_seed_fixes_sampled_codes(engines, embedder, prompt):
    sampling = SamplingParams(temperature=1.0, top_k=20)
    a = generate_codes(engines, embedder, prompt, max_frames=6, sampling=sampling, seed=1, silence_guard=None)
    b = generate_codes(engines, embedder, prompt, max_frames=6, sampling=sampling, seed=1, silence_guard=None)
    c = generate_codes(engines, embedder, prompt, max_frames=6, sampling=sampling, seed=2, silence_guard=None)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_rows_equal_single_runs(engines, embedder, prompt):
    single = generate_codes(engines, embedder, prompt, max_frames=6, sampling=GREEDY, silence_guard=None)
    batch = (prompt.tokens.expand(2, -1, -1), prompt.mask.expand(2, -1, -1))
    both = generate_codes(engines, embedder, batch, max_frames=6, sampling=GREEDY, silence_guard=None)
    assert torch.equal(both[0], single[0]) and torch.equal(both[1], single[0])


def test_end_of_speech_frame_stops_and_is_not_yielded(engines, embedder, prompt):
    free = run(engines, embedder, prompt)
    ended = run(Forcing(engines, [3], code=0), embedder, prompt)
    assert len(ended) == 3
    assert all(torch.equal(a, b) for a, b in zip(ended, free))


def test_a_row_that_ended_yields_end_frames_until_all_rows_end(engines, embedder, prompt):
    batch = (prompt.tokens.expand(2, -1, -1), prompt.mask.expand(2, -1, -1))
    free = run(engines, embedder, batch)
    frames = run(Forcing(engines, [2, 4], code=0), embedder, batch)
    assert len(frames) == 4
    assert all(torch.equal(frames[i][1], free[i][1]) for i in range(4))
    assert all(torch.equal(frames[i][0], free[i][0]) for i in range(2))
    assert all((frames[i][0] == 0).all() for i in (2, 3))


def test_silence_guard_stops_a_repeated_semantic_code(engines, embedder, prompt):
    free = run(engines, embedder, prompt)
    code = next(c for c in range(1, ARGS.audio_vocab_size) if c not in {int(f[0, 0]) for f in free[:3]})
    forced = Forcing(engines, [2], code=code, all_codebooks=False)
    assert len(run(forced, embedder, prompt)) == 12  # without the guard it goes on
    frames = run(forced, embedder, prompt, silence_guard=SilenceGuard(patience=3))
    # frame 2 is the first with `code`, frames 3, 4, 5 repeat it: the guard fires at frame 5
    assert len(frames) == 5
    assert all(int(f[0, 0]) == code for f in frames[2:])
    # with explicit silent codes, frame 2 already counts: fires at frame 4
    frames = run(forced, embedder, prompt, silence_guard=SilenceGuard(patience=3, silent_codes=frozenset({code})))
    assert len(frames) == 4


def test_budget_and_token_errors(engines, embedder, prompt):
    room = ARGS.max_seq_len - len(prompt)
    assert len(run(engines, embedder, prompt, max_frames=room)) == room
    with pytest.raises(ValueError, match=f"max_frames={room + 1} exceeds the {ARGS.max_seq_len}-position budget"):
        run(engines, embedder, prompt, max_frames=room + 1)
    bad = prompt.tokens.clone()
    bad[-1, -1] = ARGS.text_vocab_size
    with pytest.raises(ValueError, match="text token out of range"):
        run(engines, embedder, (bad, prompt.mask))
    with pytest.raises(ValueError, match="max_frames=0"):
        run(engines, embedder, prompt, max_frames=0)
    with pytest.raises(ValueError, match="SilenceGuard.patience=0"):
        SilenceGuard(patience=0)
