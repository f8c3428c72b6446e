"""``csmctl chat``'s turn logic: a conversation kept in a state file across real tiny-preset turns."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from audio_signals import tone
from csm_core.chat import chat_turn
from csm_core.config import Settings
from csm_core.conversation import Conversation
from csm_core.errors import CsmError
from csm_core.plugins import Plugins

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache dir for the module: the tiny chat LM is written into it once."""
    return tmp_path_factory.mktemp("chat-cache")


def settings(cache, **extra) -> Settings:
    return Settings(
        device="cpu", models={"preset": "tiny"}, cache_dir=cache,
        generation={"max_new_frames": 3, "seed": 0, "temperature": 0.0},
        options={"transformers": {"max_new_tokens": 6}}, **extra,
    )


def plugins() -> Plugins:
    return Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,listen"})


@pytest.mark.slow  # two turns through the tiny LLM and CSM (~20 s on 2 busy cores)
def test_two_turns_build_up_the_context_in_the_state_file(tmp_path, cache, monkeypatch):
    state = tmp_path / "chat.json"
    first = chat_turn(state, settings(cache), text="Hello there.", plugins=plugins())
    assert first.created and first.conversation.turns == 1
    saved = Conversation.load(state)
    assert [s.text for s in saved.segments] == ["Hello there.", first.turn.reply.text]
    assert saved.segments[0].speaker == 1 and saved.segments[0].codes is None  # text in: no audio
    np.testing.assert_array_equal(saved.segments[1].codes, first.turn.reply_codes)
    assert saved.segments[1].codes.shape[1] == first.turn.metrics.frames >= 1

    second = chat_turn(state, settings(cache), text="How are you?", plugins=plugins())
    assert not second.created and second.conversation.turns == 2
    saved2 = Conversation.load(state)
    assert len(saved2.segments) == 4 and Conversation(saved2.segments[:2]).same_codes(saved)
    assert saved2.segments[2].text == "How are you?"
    np.testing.assert_array_equal(saved2.segments[3].codes, second.turn.reply_codes)

    # a crash while saving the third turn leaves the second turn's state intact
    before = state.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        chat_turn(state, settings(cache), text="Third?", plugins=plugins())
    monkeypatch.undo()
    assert state.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["chat.json"]
    assert Conversation.load(state).turns == 2


def test_voice_reference_is_kept_and_checked(tmp_path, cache, write_wav):
    clip = write_wav("voice.wav", tone(200.0, 0.3, 16000), 16000)
    state = tmp_path / "chat.json"
    Conversation().save(state)
    from csm_core.chat import _resolve_voice

    conversation = Conversation.load(state)
    configured = settings(cache, voice={"audio": str(clip), "text": "My voice."})
    _, events = _resolve_voice(configured, conversation)
    assert events == [] and conversation.voice.path == clip and conversation.voice.text == "My voice."
    # a later turn without [voice] uses the conversation's
    resolved, _ = _resolve_voice(settings(cache), conversation)
    assert (resolved.voice.audio, resolved.voice.text) == (clip, "My voice.")
    # another clip switches, and says so
    other = write_wav("other.wav", tone(300.0, 0.3, 16000), 16000)
    _, events = _resolve_voice(settings(cache, voice={"audio": str(other), "text": "Other."}), conversation)
    assert len(events) == 1 and "voice profile changed" in events[0] and conversation.voice.path == other
    # the clip changed on disk since: a clear error
    write_wav("other.wav", tone(310.0, 0.3, 16000), 16000)
    with pytest.raises(CsmError, match="changed since the conversation started"):
        _resolve_voice(settings(cache), conversation)
    other.unlink()
    with pytest.raises(CsmError, match="no longer exists"):
        _resolve_voice(settings(cache), conversation)


def test_bad_state_file_and_arguments_are_errors_before_anything_runs(tmp_path, cache):
    state = tmp_path / "chat.json"
    state.write_text(json.dumps({"format": "csm-multi-conversation", "version": 99, "segments": []}))
    with pytest.raises(CsmError, match="has version 99"):
        chat_turn(state, settings(cache), text="hi", plugins=Plugins())
    with pytest.raises(CsmError, match="either audio or text"):
        chat_turn(state, settings(cache), plugins=Plugins())
    with pytest.raises(CsmError, match="does not exist"):
        chat_turn(tmp_path / "missing" / "chat.json", settings(cache), text="hi", plugins=Plugins())


def chunk_hook(action):
    """An ``on_audio`` that runs ``action`` once, when the first chunk of the reply arrives: a real change
    to the disk while the turn runs, so the write that follows really fails."""
    done = []

    def on_audio(samples):
        if not done:
            done.append(action())

    return on_audio


@pytest.mark.slow  # one turn through the tiny LLM and CSM
def test_reply_audio_is_written_before_the_state_and_a_failed_audio_write_keeps_the_state(tmp_path, cache):
    state = tmp_path / "chat.json"
    Conversation(turns=0).save(state)
    before = state.read_bytes()
    folder = tmp_path / "replies"
    folder.mkdir()
    output = folder / "reply.wav"
    with pytest.raises(CsmError, match=r"cannot write .*reply.wav'.*does not exist"):
        chat_turn(state, settings(cache), text="Hello there.", output=output, plugins=plugins(),
                  on_audio=chunk_hook(folder.rmdir))
    assert state.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["chat.json"]


@pytest.mark.slow  # one turn through the tiny LLM and CSM
def test_a_failed_state_write_puts_the_reply_audio_back(tmp_path, cache, write_wav):
    state = tmp_path / "chat.json"
    output = write_wav("reply.wav", tone(300.0, 0.2, 24000), 24000)
    before = output.read_bytes()
    with pytest.raises(CsmError, match=r"cannot write the chat state file .*chat.json'.*reply.wav' was put back as it was"):
        chat_turn(state, settings(cache), text="Hello there.", output=output, plugins=plugins(),
                  on_audio=chunk_hook(state.mkdir))  # a folder where the state file goes
    assert output.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["chat.json", "reply.wav"] and state.is_dir() and not os.listdir(state)
    # and with no audio file before the turn, none is left behind
    output.unlink()
    state.rmdir()
    with pytest.raises(CsmError, match="cannot write the chat state file"):
        chat_turn(state, settings(cache), text="Hello there.", output=output, plugins=plugins(),
                  on_audio=chunk_hook(state.mkdir))
    assert sorted(os.listdir(tmp_path)) == ["chat.json"]


@pytest.mark.slow  # loads the tiny LLM and CSM, generates nothing
@pytest.mark.parametrize(("codes", "message"), [
    ([[5000, 1]] * 32, r"segments\[1\].codes\[0\]\[0\] = 5000: a code must be below the codec's codebook size 2048"),
    ([[1, 2]] * 4, r"segments\[1\].codes has 4 codebooks, but this model's codec has 32"),
])
def test_codes_the_codec_cannot_hold_are_refused_once_the_model_is_known(tmp_path, cache, codes, message):
    state = tmp_path / "chat.json"
    state.write_text(json.dumps({
        "format": "csm-multi-conversation", "version": 2, "turns": 1, "voice": None,
        "segments": [{"speaker": 1, "text": "hi", "codes": None}, {"speaker": 0, "text": "hello", "codes": codes}],
    }))
    before = state.read_bytes()
    spoken = []
    with pytest.raises(CsmError, match=rf"conversation file '{tmp_path}/chat.json': {message}"):
        chat_turn(state, settings(cache), text="And now?", output=tmp_path / "reply.wav", plugins=plugins(),
                  on_audio=spoken.append)
    assert spoken == [] and state.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["chat.json"]


def test_outputs_are_checked_before_anything_loads(tmp_path, cache, write_wav):
    state = tmp_path / "chat.json"
    with pytest.raises(CsmError, match=r"cannot write the reply to .*: directory .*missing' does not exist"):
        chat_turn(state, settings(cache), text="hi", output=tmp_path / "missing" / "r.wav", plugins=Plugins())
    with pytest.raises(CsmError, match=r"it is a directory; give a file name such as reply.wav"):
        chat_turn(state, settings(cache), text="hi", output=tmp_path, plugins=Plugins())
    with pytest.raises(CsmError, match=r"would both be written to .*chat.json'"):
        chat_turn(state, settings(cache), text="hi", output=state, plugins=Plugins())
    # the voice clip's header, configured or remembered by the conversation
    click = write_wav("click.wav", tone(200.0, 0.01, 16000), 16000)
    with pytest.raises(CsmError, match=r"voice.audio '.*click.wav' is too short: 0.01 s"):
        chat_turn(state, settings(cache, voice={"audio": str(click), "text": "Hi."}), text="hi", plugins=Plugins())
    assert sorted(os.listdir(tmp_path)) == ["click.wav"]
