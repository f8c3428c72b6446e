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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 0}, rf"has version 0; this csm-multi reads version {FORMAT_VERSION}"),
        ({"version": 99}, "has version 99"),
        ({"format": "other"}, "is not a csm-multi conversation file"),
        ({"turns": -1}, "turns=-1: must be an integer >= 0"),
        ({"turns": "2"}, "turns='2'"),
        ({"segments": {}}, "no list of segments"),
        ({"segments": [{"speaker": 0}]}, "malformed segment 0"),
        ({"segments": [{"speaker": 0, "text": "x", "codes": [[1, 2], [3]]}]}, "malformed segment 0"),
        ({"segments": [{"speaker": 0, "text": "x", "codes": [1, 2]}]}, r"segment 0 has codes of shape \(2,\)"),
        ({"voice": {"path": "v.wav", "sha256": "nothex", "text": "t"}}, "malformed voice reference"),
        ({"voice": {"path": "v.wav"}}, "malformed voice reference"),
    ],
)
def test_malformed_or_foreign_files_are_clear_errors(tmp_path, change, message):
    payload = {**sample().to_dict(), **change}
    path = write(tmp_path, payload)
    with pytest.raises(CsmError, match=message) as error:
        Conversation.load(path)
    assert str(path) in str(error.value) or change.get("format")


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
