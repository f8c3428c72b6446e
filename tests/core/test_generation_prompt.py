"""Prompt assembly as in Sesame's generator: text frames, audio frames + end frame, the position budget."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csm_core.generation.prompt import build_prompt  # noqa: E402
from csm_core.stages import Segment  # noqa: E402

K = 4


class ByteTokenizer:
    """UTF-8 bytes -> ids 3..258, with BOS 1 / EOS 2 around the text when ``add_bos_eos``."""

    def __init__(self, add_bos_eos: bool = True) -> None:
        self.add_bos_eos = add_bos_eos

    def encode(self, text: str) -> list[int]:
        ids = [b + 3 for b in text.encode()]
        return [1, *ids, 2] if self.add_bos_eos else ids


def codes(frames: int, start: int = 1) -> torch.Tensor:
    return (torch.arange(K * frames).reshape(K, frames) % 30) + start


def test_layout_matches_sesames_generator():
    tok = ByteTokenizer()
    context = [Segment(0, "hi", codes(3))]
    prompt = build_prompt(context, 1, "yo", tok, num_codebooks=K, max_frames=5)
    ctx_text = tok.encode("[0]hi")
    cur_text = tok.encode("[1]yo")
    assert len(prompt) == len(ctx_text) + 3 + 1 + len(cur_text)
    t = len(ctx_text)
    # text frames: only the last column, holding the token ids
    assert prompt.tokens[:t, -1].tolist() == ctx_text and prompt.mask[:t].tolist() == [[False] * K + [True]] * t
    assert (prompt.tokens[:t, :-1] == 0).all()
    # audio frames: the codes (transposed) with all K codebooks present, then the all-zero end frame
    assert torch.equal(prompt.tokens[t : t + 3, :-1], codes(3).t())
    assert (prompt.tokens[t + 3] == 0).all()
    assert prompt.mask[t : t + 4].tolist() == [[True] * K + [False]] * 4
    # the text to speak comes last, with no audio after it
    assert prompt.tokens[-len(cur_text) :, -1].tolist() == cur_text


def test_bos_eos_are_the_tokenizers_choice():
    with_special = build_prompt([], 0, "ab", ByteTokenizer(True), num_codebooks=K, max_frames=1)
    without = build_prompt([], 0, "ab", ByteTokenizer(False), num_codebooks=K, max_frames=1)
    assert with_special.tokens[:, -1].tolist() == [1, *without.tokens[:, -1].tolist(), 2]


def test_context_without_audio_is_text_only():
    prompt = build_prompt([Segment(0, "x")], 1, "y", ByteTokenizer(), num_codebooks=K, max_frames=1)
    assert prompt.mask[:, :-1].sum() == 0


def test_budget_error_says_what_to_do():
    tok = ByteTokenizer()
    context = [Segment(0, "a", codes(40))]
    n = len(build_prompt(context, 1, "b", tok, num_codebooks=K, max_frames=1))
    build_prompt(context, 1, "b", tok, num_codebooks=K, max_frames=100 - n, max_positions=100)  # exactly fits
    with pytest.raises(ValueError, match=rf"prompt of {n} positions \+ max_frames={101 - n} exceeds the 100-position"):
        build_prompt(context, 1, "b", tok, num_codebooks=K, max_frames=101 - n, max_positions=100)


def test_context_is_trimmed_by_the_policy_alone_whose_cost_is_the_prompt_length():
    """One place trims context (csm_core.context_policy, oldest first, never the text); the prompt takes all
    the context it is given, and the policy's cost model counts exactly the prompt's positions."""
    from csm_core.config import Settings
    from csm_core.context_policy import context_for_turn, segment_cost

    tok = ByteTokenizer()
    count = lambda text: len(tok.encode(text))  # noqa: E731
    history = [Segment(0, "old", codes(30).numpy()), Segment(1, "mid", codes(30).numpy()),
               Segment(0, "new", codes(5, start=7).numpy())]

    def prompt(context, text="speak"):
        segments = list(context)
        return build_prompt(segments, 1, text, tok, num_codebooks=K, max_frames=40, max_positions=100)

    settings = Settings(generation={"max_new_frames": 40})
    chosen, events = context_for_turn(history, None, None, settings, speaker=1, text="speak", max_positions=100,
                                      text_tokens=count)
    assert [s.text for s in chosen] == ["new"] and "dropped the 2 oldest turn(s)" in events[0]
    assert len(prompt(chosen)) == sum(segment_cost(count)(s) for s in chosen) + count("[1]speak")
    with pytest.raises(ValueError, match="exceeds the 100-position budget"):  # the prompt itself never trims
        prompt(history)
    with pytest.raises(ValueError, match="exceeds"):  # even the text alone does not fit
        prompt([], "x" * 80)


def test_bad_segments_are_rejected():
    with pytest.raises(ValueError, match="Segment.speaker=-1"):
        Segment(-1, "x")
    with pytest.raises(ValueError, match=r"Segment.codes: must be integer codes \[K,F\], got int64 \(4,\)"):
        Segment(0, "x", torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="has 3 codebooks, the model has 4"):
        build_prompt([Segment(0, "x", torch.zeros(3, 2, dtype=torch.long))], 0, "y", ByteTokenizer(), num_codebooks=K, max_frames=1)
    with pytest.raises(ValueError, match="max_frames=0"):
        build_prompt([], 0, "y", ByteTokenizer(), num_codebooks=K, max_frames=0)
