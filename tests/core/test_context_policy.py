"""The context policy as a pure function over segment costs, its wiring helper and its settings."""

from __future__ import annotations

import numpy as np
import pytest

from csm_core.config import Settings
from csm_core.context_policy import (
    ContextBudgetError,
    choose_context,
    context_for_turn,
    segment_cost,
    stage_window,
    utf8_token_bound,
)
from csm_core.errors import ConfigError
from csm_core.stages import Segment


def seg(speaker: int, text: str, frames: int | None) -> Segment:
    codes = None if frames is None else np.zeros((4, frames), dtype=np.int64)
    return Segment(speaker, text, codes)


COST = segment_cost()


def keys(segments) -> list[tuple]:
    """Comparable form of segments (Segment == Segment is ambiguous with numpy codes)."""
    return [(s.speaker, s.text, None if s.codes is None else s.codes.shape[1]) for s in segments]


def test_segment_cost_is_text_tokens_plus_frames_plus_end_frame():
    # "[1]hi" is 5 bytes + BOS + EOS = 7 text positions; 10 audio frames + 1 end frame
    assert COST(seg(1, "hi", 10)) == 7 + 11
    assert COST(seg(1, "hi", None)) == 7
    assert COST(seg(0, "é", None)) == len("[0]é".encode()) + 2  # bytes, not characters


def test_everything_fits_nothing_changes():
    history = [seg(i % 2, f"turn {i}", 5) for i in range(4)]
    choice = choose_context(history, budget=10_000, cost=COST, current=(seg(1, "now", 3),))
    assert keys(choice.segments) == keys([*history, seg(1, "now", 3)])
    assert choice.dropped == choice.text_only == choice.events == ()
    assert choice.positions == sum(COST(s) for s in choice.segments)


def test_newest_turns_kept_oldest_dropped_and_reported():
    history = [seg(i % 2, f"turn {i}", 20) for i in range(5)]  # each costs 11 + 21 = 32
    current = seg(1, "now", 9)  # 8 + 10 = 18
    budget = 18 + 2 * 32 + 5
    choice = choose_context(history, budget=budget, cost=COST, current=(current,))
    assert keys(choice.segments) == keys([history[3], history[4], current])
    assert choice.dropped == (0, 1, 2)
    assert choice.positions <= budget
    assert len(choice.events) == 1 and "dropped the 3 oldest turn(s) (96 positions)" in choice.events[0]


def test_text_of_dropped_turns_kept_when_allowed_and_audio_never_skips_back():
    history = [seg(0, "a", 2), seg(1, "bb", 40), seg(0, "c", 20)]  # costs 6+3, 7+41, 6+21
    current = seg(1, "now", None)  # 8
    budget = 8 + 27 + 7 + 6  # newest with audio; "bb" only as text (7); "a" would fit with audio (9)
    choice = choose_context(history, budget=budget, cost=COST, current=(current,), keep_text_of_dropped=True)
    # "a" fits as text only (6): an older turn never keeps audio after a newer one lost it
    assert keys(choice.segments) == keys([Segment(0, "a"), Segment(1, "bb"), history[2], current])
    assert choice.text_only == (0, 1) and choice.dropped == ()
    assert "kept 2 older turn(s) as text only (their 42 audio frames" in choice.events[0]
    without = choose_context(history, budget=budget, cost=COST, current=(current,))
    assert keys(without.segments) == keys([history[2], current]) and without.dropped == (0, 1)


def test_a_dropped_turn_drops_every_older_one():
    history = [seg(0, "x", None), seg(1, "a much longer text than the budget allows", None), seg(0, "y", None)]
    choice = choose_context(history, budget=20, cost=COST, keep_text_of_dropped=True)
    assert keys(choice.segments) == keys([history[2]]) and choice.dropped == (0, 1)


def test_profile_is_pinned_before_history_and_first_in_order():
    profile = seg(0, "my voice", 30)  # 13 + 31 = 44
    history = [seg(1, "old", 10), seg(0, "new", 10)]  # 8 + 11 = 19 each
    choice = choose_context(history, budget=44 + 19 + 8, cost=COST, pinned=(profile,), current=(seg(1, "q", None),))
    assert keys(choice.segments) == keys([profile, history[1], seg(1, "q", None)])
    assert choice.dropped == (0,)


def test_profile_that_does_not_fit_is_dropped_with_an_event():
    profile = seg(0, "my voice", 300)
    choice = choose_context([], budget=50, cost=COST, pinned=(profile,), current=(seg(1, "q", None),))
    assert keys(choice.segments) == keys([seg(1, "q", None)])
    assert "voice profile (314 positions) does not fit the 50-position budget" in choice.events[0]


def test_current_turn_never_dropped_silently():
    current = seg(1, "the user's long turn", 100)
    with pytest.raises(ContextBudgetError, match=r"current turn needs 136 positions .* budget is 120"):
        choose_context([seg(0, "a", 1)], budget=120, cost=COST, current=(current,), reserved=10)
    with pytest.raises(ValueError, match="budget=0"):
        choose_context([], budget=0, cost=COST)


def test_reserved_positions_count_against_the_budget():
    history = [seg(0, "a", 2)]  # 9
    assert keys(choose_context(history, budget=9, cost=COST).segments) == keys(history)
    assert choose_context(history, budget=9, cost=COST, reserved=1).segments == ()


def settings(generation: dict | None = None, **extra) -> Settings:
    return Settings(generation={"max_new_frames": 100, **(generation or {})}, **extra)


def test_context_for_turn_default_budget_is_the_window_minus_max_frames():
    history = [seg(i % 2, "t", 50) for i in range(6)]  # 6 + 51 = 57 each
    user = seg(1, "u", 10)  # 17
    reply = utf8_token_bound("[0]ok")  # 7
    context, events = context_for_turn(history, None, user, settings(), speaker=0, text="ok", max_positions=300)
    # 300 - 100 = 200 positions: 7 + 17 = 24 for the turn, 3 turns of 57 fit (171), a fourth does not
    assert keys(context) == keys([*history[3:], user]) and 200 - (reply + 17 + 3 * 57) < 57
    assert len(events) == 1 and "dropped the 3 oldest" in events[0]


def test_context_for_turn_uses_the_configured_budget_and_keeps_text_when_asked():
    history = [seg(i % 2, "t", 50) for i in range(6)]
    full = context_for_turn(history, None, None, settings(), speaker=0, text="ok", max_positions=2048)[0]
    context = {"budget_positions": 90, "keep_text_of_dropped": True}
    on, events = context_for_turn(history, None, None, settings(context=context), speaker=0, text="ok",
                                  max_positions=2048)
    assert keys(full) == keys(history)
    # 90 - 7 = 83: the newest with audio (57), then text only (6 each) for 4 of the older five
    assert on[-1] is history[-1] and all(s.codes is None for s in on[:-1]) and len(on) == 5
    assert any("text only" in e for e in events) and any("dropped the 1 oldest" in e for e in events)
    dropped, events = context_for_turn(history, None, None, settings(context={"budget_positions": 90}), speaker=0,
                                       text="ok", max_positions=2048)
    assert keys(dropped) == keys(history[-1:]) and "dropped the 5 oldest" in events[0]  # text not kept by default
    # the model's window minus the frames wins when it is the smaller
    small, _ = context_for_turn(history, None, None, settings(context={"budget_positions": 5000}), speaker=0,
                                text="ok", max_positions=300)
    assert keys(small) == keys(history[3:])


def test_trimming_switched_off_passes_everything():
    history = [seg(i % 2, "t", 50) for i in range(6)]
    profile = seg(0, "voice", 3)
    off = settings(generation={"trim_context": False}, context={"budget_positions": 90})
    context, events = context_for_turn(history, profile, None, off, speaker=0, text="ok", max_positions=300)
    assert keys(context) == keys([profile, *history]) and events == []


def test_context_for_turn_no_room():
    with pytest.raises(ContextBudgetError, match="max_new_frames=100 leaves no room"):
        context_for_turn([], None, None, settings(), speaker=0, text="ok", max_positions=100)
    with pytest.raises(ContextBudgetError, match="or raise context.budget_positions"):
        context_for_turn([], None, seg(1, "u", 20), settings(context={"budget_positions": 10}), speaker=0, text="ok")


def test_bad_context_settings_are_clear_config_errors():
    from csm_core.config import load_settings

    with pytest.raises(ConfigError, match=r"context.budget_positions: must be at least 1 position .*leave it out"):
        load_settings(environ={"CSM_CONTEXT__BUDGET_POSITIONS": "0"})
    with pytest.raises(ConfigError, match=r"context.keep_text: unknown setting"):
        load_settings(environ={"CSM_CONTEXT__KEEP_TEXT": "true"})
    with pytest.raises(ConfigError, match=r"generation.max_batch: must be 1..64 utterances .*one by one"):
        load_settings(environ={"CSM_GENERATION__MAX_BATCH": "65"})
    assert load_settings(environ={"CSM_GENERATION__MAX_BATCH": "8"}).generation.max_batch == 8
    assert load_settings(environ={}).context.budget_positions is None


def test_stage_window_is_the_stage_capability_or_the_defaults():
    class Windowed:
        capabilities = {"position_window"}
        max_positions = 512

        def count_text_tokens(self, text):
            return 3

    class Unclaimed:  # has the members but does not claim the capability: not used
        max_positions = 512

        def count_text_tokens(self, text):
            return 3

    positions, count = stage_window(Windowed())
    assert positions == 512 and count("anything") == 3
    assert stage_window(Unclaimed()) == (2048, utf8_token_bound)
