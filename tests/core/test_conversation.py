"""The conversation state file: round trip, voice reference, atomic saves, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from csm_core.conversation import FORMAT_VERSION, Conversation
from csm_core.errors import CsmError
from csm_core.stages import Segment
from csm_core.voice_profile import VoiceReference

SHA = "ab" * 32


def sample() -> Conversation:
    codes = np.arange(12, dtype=np.int64).reshape(3, 4)
    segments = [Segment(1, "hello", codes), Segment(0, "hi there", None), Segment(1, "é ok", codes + 7)]
    return Conversation(segments, VoiceReference(Path(os.path.abspath("voice.wav")), SHA, "my voice", None), turns=2)


def test_round_trip_keeps_segments_codes_voice_and_turns(tmp_path):
    original = sample()
    loaded = Conversation.load(original.save(tmp_path / "chat.json"))
    assert loaded.same_codes(original) and loaded.turns == 2 and loaded.voice == original.voice
    assert loaded.segments[0].codes.dtype == np.int64
    payload = json.loads((tmp_path / "chat.json").read_text())
    assert payload["voice"] == {"path": os.path.abspath("voice.wav"), "sha256": SHA, "text": "my voice", "speaker": None}
    assert "samples" not in json.dumps(payload)  # a reference, never the audio


def test_same_codes_notices_any_difference():
    a, b = sample(), sample()
    assert a.same_codes(b)
    b.segments[2] = Segment(1, "é ok", b.segments[2].codes + 1)
    assert not a.same_codes(b)
    assert not a.same_codes(Conversation(a.segments[:2]))


def test_interrupted_save_leaves_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "chat.json"
    sample().save(path)
    before = path.read_bytes()
    bigger = sample()
    bigger.add(Segment(0, "one more", None))

    def crash(*args):
        raise KeyboardInterrupt  # killed between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["chat.json"]
    assert Conversation.load(path).same_codes(sample())


def write(tmp_path, payload) -> str:
    path = tmp_path / "state.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


SEGMENT = {"speaker": 1, "text": "x", "codes": None}


def segments(*items: dict) -> dict:
    return {"segments": [{**SEGMENT, **item} for item in items]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 0}, rf"has version 0; this csm-multi reads version {FORMAT_VERSION}"),
        ({"version": 99}, "has version 99"),
        ({"version": True}, "has version True"),
        ({"version": "2"}, "has version '2'"),
        ({"format": "other"}, "is not a csm-multi conversation file"),
        ({"extra": 1}, r": extra = 1: is not a field of this format \(known: format, version"),
        ({"turns": -1}, r": turns = -1: must be an integer >= 0; fix the value, or delete the file"),
        ({"turns": "2"}, r"turns = '2': must be an integer >= 0"),
        ({"turns": 1.5}, r"turns = 1.5: must be an integer >= 0"),
        ({"turns": None}, r"turns = null: must be an integer >= 0"),
        ({"turns": True}, r"turns = true: must be an integer >= 0"),
        ({"segments": {}}, r"segments = \{\}: must be a list of segments"),
        ({"segments": None}, r"segments = null: must be a list of segments"),
        ({"segments": ["x"]}, r"malformed segment 0: segments\[0\] = 'x': must be an object"),
        ({"segments": [{"speaker": 0}]}, r"malformed segment 0: segments\[0\].text is missing: must be a string"),
        (segments({}, {"speaker": -1}), r"malformed segment 1: segments\[1\].speaker = -1: must be an integer >= 0"),
        (segments({"speaker": "0"}), r"segments\[0\].speaker = '0': must be an integer >= 0"),
        (segments({"speaker": 1.0}), r"segments\[0\].speaker = 1.0: must be an integer >= 0"),
        (segments({"text": None}), r"segments\[0\].text = null: must be a string"),
        (segments({"text": 5}), r"segments\[0\].text = 5: must be a string"),
        (segments({"mood": "ok"}), r"segments\[0\].mood = 'ok': is not a field of this format"),
        (segments({"codes": [[1, 2], [3]]}), r"segments\[0\].codes\[1\] has 1 frames: segments\[0\].codes\[0\] has 2"),
        (segments({"codes": [1, 2]}), r"segments\[0\].codes\[0\] = 1: must be a non-empty list of integer codes"),
        (segments({"codes": []}), r"segments\[0\].codes = \[\]: must be null or a \[K\]\[F\] list"),
        (segments({"codes": [[]]}), r"segments\[0\].codes\[0\] = \[\]: must be a non-empty list"),
        (segments({"codes": "abc"}), r"segments\[0\].codes = 'abc': must be null or a \[K\]\[F\] list"),
        (segments({"codes": [[1, -2]]}), r"segments\[0\].codes\[0\]\[1\] = -2: must be an integer code >= 0"),
        (segments({"codes": [[1, 2.5]]}), r"segments\[0\].codes\[0\]\[1\] = 2.5: must be an integer code >= 0"),
        (segments({"codes": [[True]]}), r"segments\[0\].codes\[0\]\[0\] = true: must be an integer code"),
        (segments({"codes": [[1, "7"]]}), r"segments\[0\].codes\[0\]\[1\] = '7': must be an integer code"),
        (segments({"codes": [[1, None]]}), r"segments\[0\].codes\[0\]\[1\] = null: must be an integer code"),
        (segments({"codes": [[2**70]]}), r"segments\[0\].codes\[0\]\[0\] = 1180591620717411303424: must be an integer"),
        (segments({"codes": [[1]]}, {"codes": [[1], [2]]}),
         r"segments\[1\].codes has 2 codebooks: segments\[0\].codes has 1, and every segment comes from one codec"),
        ({"voice": {"path": "v.wav", "sha256": "nothex", "text": "t"}},
         r"malformed voice reference: voice.sha256 = 'nothex'"),
        ({"voice": {"path": "v.wav"}}, r"malformed voice reference: voice.sha256 is missing"),
        ({"voice": "v.wav"}, r"voice = 'v.wav': must be null or an object"),
        ({"voice": {"path": "", "sha256": SHA, "text": "t"}}, r"voice.path = '': must be a non-empty string"),
        ({"voice": {"path": None, "sha256": SHA, "text": "t"}}, r"voice.path = null: must be a non-empty string"),
        ({"voice": {"path": "v.wav", "sha256": SHA.upper(), "text": "t"}}, r"voice.sha256 = 'ABAB.*lowercase hex"),
        ({"voice": {"path": "v.wav", "sha256": SHA, "text": None}}, r"voice.text = null: must be a non-empty string"),
        ({"voice": {"path": "v.wav", "sha256": SHA, "text": "t", "speaker": -3}},
         r"voice.speaker = -3: must be an integer >= 0 or null"),
    ],
)
def test_malformed_or_foreign_files_are_clear_errors(tmp_path, change, message):
    payload = {**sample().to_dict(), **change}
    path = write(tmp_path, payload)
    with pytest.raises(CsmError, match=message) as error:
        Conversation.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_segment_with_null_text_is_never_saved_as_the_string_none(tmp_path):
    conversation = sample()
    conversation.add(Segment(1, None, None))
    with pytest.raises(CsmError, match=r"segments\[3\].text = null: must be a string.*nothing was written"):
        conversation.save(tmp_path / "chat.json")
    assert not (tmp_path / "chat.json").exists()


def test_codes_are_checked_against_the_codec_once_it_is_known():
    conversation = sample()  # codes [3, 4], values 0..18
    conversation.check_codes_fit(3, 19, "chat.json")
    with pytest.raises(CsmError, match=r"chat.json: segments\[0\].codes has 3 codebooks, but this model's codec has 32"):
        conversation.check_codes_fit(32, 2048, "chat.json")
    with pytest.raises(CsmError, match=r"segments\[2\].codes\[2\]\[3\] = 18: a code must be below the codec's "
                       r"codebook size 18"):
        conversation.check_codes_fit(3, 18, "chat.json")


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(CsmError, match="does not exist"):
        Conversation.load(tmp_path / "none.json")
    with pytest.raises(CsmError, match="is not valid JSON .*delete it to start a new conversation"):
        Conversation.load(write(tmp_path, '{"format": "csm-multi-conv'))


def test_a_version_1_file_still_loads_with_its_segments(tmp_path):
    """Version 1 held only the segments: they load, with no voice and the turns counted from them."""
    segments = [segment.to_dict() for segment in sample().segments]
    path = write(tmp_path, {"format": "csm-multi-conversation", "version": 1, "segments": segments})
    loaded = Conversation.load(path)
    assert loaded.voice is None and loaded.turns == len(segments) // 2
    assert [s.text for s in loaded.segments] == [s.text for s in sample().segments]
