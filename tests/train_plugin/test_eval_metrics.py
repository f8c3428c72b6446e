"""The metric functions of ``csmctl eval`` on cases whose answer is known, and the prompt file's checks.

Speech comes from espeak-ng (two voices a known way apart in pitch); the prosody numbers come from the
prosody analyzer itself, so these tests check that eval compares the right things, not pitch tracking.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from csm_core.errors import CsmError
from csm_train.evaluation import (
    PROSODY_FIELDS, arousal_ordering, corpus_error_rates, error_rates, load_prompts, metric_group,
    normalize_text, prosody_deltas, prosody_summary,
)

pytest.importorskip("jiwer")

ESPEAK = shutil.which("espeak-ng")
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it rests for a while."


def espeak(folder: Path, name: str, *args: str, text: str = SENTENCE) -> Path:
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = folder / name
    subprocess.run([ESPEAK, *args, "-w", str(path), text], check=True, capture_output=True)
    return path


def summary(path: Path) -> dict:
    samples, rate = sf.read(str(path), dtype="float32")
    return prosody_summary(samples, rate)


# -- intelligibility ----------------------------------------------------------------------------------
def test_identical_text_has_no_errors():
    assert error_rates("Hello, world! It's me.", "hello world it's me") == {"wer": 0.0, "cer": 0.0}


def test_one_substituted_word_in_four():
    rates = error_rates("the cat sat down", "the dog sat down")
    assert rates["wer"] == pytest.approx(1 / 4)
    # "cat" -> "dog": 3 substituted characters of the 16 in "the cat sat down"
    assert rates["cer"] == pytest.approx(3 / 16)


def test_an_empty_transcript_is_all_deletions_and_insertions_count():
    assert error_rates("one two three", "") == {"wer": 1.0, "cer": 1.0}
    assert error_rates("one two", "one two three four")["wer"] == pytest.approx(2 / 2)


def test_corpus_rates_sum_errors_over_the_references():
    # 1 substitution in 3 words + 1 insertion against 1 word: 2 errors / 4 reference words
    assert corpus_error_rates(["a b c", "d"], ["a x c", "d e"])["wer"] == pytest.approx(2 / 4)
    assert normalize_text("  Hello,   WORLD!! ") == "hello world"


# -- prosody ------------------------------------------------------------------------------------------
def test_the_same_clip_has_zero_prosody_deltas(tmp_path):
    clip = summary(espeak(tmp_path, "a.wav", "-v", "en"))
    assert clip["f0_median_hz"] is not None and clip["speaking_rate_hz"] is not None
    assert prosody_deltas(clip, clip) == {name: 0.0 for name in PROSODY_FIELDS}


def test_a_higher_voice_has_a_higher_f0_median(tmp_path):
    low = summary(espeak(tmp_path, "low.wav", "-v", "en", "-p", "20"))
    high = summary(espeak(tmp_path, "high.wav", "-v", "en+f3", "-p", "80"))
    delta = prosody_deltas(high, low)
    # a female variant at pitch 80 against the male default at pitch 20: well over an octave apart
    assert delta["f0_median_hz"] > 0
    assert high["f0_median_hz"] > 1.5 * low["f0_median_hz"]


def test_a_faster_voice_has_a_higher_speaking_rate(tmp_path):
    slow = summary(espeak(tmp_path, "slow.wav", "-v", "en", "-s", "110"))
    fast = summary(espeak(tmp_path, "fast.wav", "-v", "en", "-s", "260"))
    assert prosody_deltas(fast, slow)["speaking_rate_hz"] > 0


def test_a_missing_feature_gives_a_missing_delta_with_a_reason():
    delta = prosody_deltas({"f0_median_hz": None, "f0_spread_st": 1.0, "speaking_rate_hz": 4.0, "pause_count": 1,
                            "pause_ratio": 0.1},
                           {"f0_median_hz": 120.0, "f0_spread_st": 2.0, "speaking_rate_hz": 3.0, "pause_count": 0,
                            "pause_ratio": 0.0})
    assert delta["f0_median_hz"] is None and delta["f0_spread_st"] == -1.0 and delta["pause_count"] == 1
    group = metric_group(delta, default="no voiced frame")
    assert group["skipped"] == {"f0_median_hz": "no voiced frame"}


# -- emotion ------------------------------------------------------------------------------------------
def test_arousal_ordering_counts_pairs_of_different_requests():
    calm, excited = -0.5, 0.8
    assert arousal_ordering([calm, excited], [-0.2, 0.4]) == {"pairs": 1, "agreement": 1.0}
    assert arousal_ordering([calm, excited], [0.4, -0.2]) == {"pairs": 1, "agreement": 0.0}
    # calm/calm is not a pair; of the two calm/excited pairs one is ordered right, one wrong
    assert arousal_ordering([calm, calm, excited], [0.0, 0.5, 0.3]) == {"pairs": 2, "agreement": 0.5}
    assert arousal_ordering([calm, calm], [0.0, 0.1]) == {"pairs": 0, "agreement": None}


# -- the prompt file ----------------------------------------------------------------------------------
def write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_prompts_resolve_paths_next_to_the_file_and_note_unknown_fields(tmp_path):
    espeak(tmp_path, "voice.wav", "-v", "en", text="This is my voice.")
    path = write(tmp_path / "p.jsonl", [
        {"text": "Hello.", "voice": "voice.wav", "voice_text": "This is my voice.", "emotion": "calm",
         "reference": "voice.wav"},
        "",
        {"text": "Bye.", "speed": 2},
    ])
    prompts, notes = load_prompts(path, ["calm", "excited"])
    assert [p.line for p in prompts] == [1, 3]
    assert prompts[0].voice == tmp_path / "voice.wav" and prompts[0].reference == tmp_path / "voice.wav"
    assert prompts[1].emotion is None and prompts[1].voice is None
    assert len(notes) == 1 and "'speed'" in notes[0] and "line 3" in notes[0]


@pytest.mark.parametrize("lines, message", [
    (['{"text": "ok"}', '{"text": oops}'], "p.jsonl line 2: not valid JSON"),
    (['{"text": "ok"}', '{"text": "   "}'], "p.jsonl line 2: field 'text' is empty"),
    (['["text"]'], "line 1: expected a JSON object"),
    (['{"words": "hi"}'], "line 1: field 'text'"),
    (['{"text": "hi", "voice": "nope.wav", "voice_text": "x"}'], "line 1: voice file 'nope.wav' does not exist"),
    (['{"text": "hi", "emotion": "joyful"}'], "line 1: emotion 'joyful' is not one of"),
    (['', '  '], "holds no prompt"),
])
def test_bad_prompt_files_name_the_line(tmp_path, lines, message):
    with pytest.raises(CsmError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_prompts(write(tmp_path / "p.jsonl", lines), ["calm"])


def test_a_missing_prompt_file_is_refused(tmp_path):
    with pytest.raises(CsmError, match="does not exist"):
        load_prompts(tmp_path / "none.jsonl")


# -- voice (only where the optional speaker encoder is installed) -------------------------------------
def test_speaker_similarity_is_one_for_the_same_clip_and_lower_for_another_voice(tmp_path):
    from csm_train.evaluation import speaker_similarity, speaker_similarity_unavailable

    reason = speaker_similarity_unavailable()
    if reason is not None:
        pytest.skip(reason)
    clips = {}
    for name, args, text in (("a1", ["-v", "en", "-p", "30"], SENTENCE),
                             ("a2", ["-v", "en", "-p", "30"], "She sells sea shells on the sea shore every morning."),
                             ("b1", ["-v", "en+f3", "-p", "80"], "She sells sea shells on the sea shore every morning.")):
        clips[name] = sf.read(str(espeak(tmp_path, f"{name}.wav", *args, text=text)), dtype="float32")
    (a1, rate), (a2, _), (b1, _) = clips["a1"], clips["a2"], clips["b1"]
    assert speaker_similarity(a1, rate, a1, rate) == pytest.approx(1.0, abs=1e-5)
    assert speaker_similarity(a1, rate, a2, rate) > speaker_similarity(a1, rate, b1, rate)
