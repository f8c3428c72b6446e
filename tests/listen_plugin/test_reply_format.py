"""The reply prompt and the robust parsing of the chat LM's structured answer (pure Python, fast)."""

from __future__ import annotations

import json

import pytest

from csm_core.stages import Reply, ReplyRequest, Segment
from csm_listen.reply_format import (
    DEFAULT_FALLBACK_TEXT,
    build_messages,
    describe_sentiment,
    json_objects,
    parse_reply,
    render_plain,
)
from csm_listen.sentiment import SentimentAnalyzer

EMOTIONS = ("happy", "calm", "sad", "neutral")


@pytest.fixture(scope="module")
def sentiment(tone):
    """A real Sentiment of a harmonic tone (whatever label the analyzer gives it)."""
    return SentimentAnalyzer().analyze(tone(180.0, 1.5, 16000, (1.0, 0.5, 0.25)), 16000)


@pytest.mark.parametrize(
    "raw",
    [
        '{"emotion": "happy", "reply": "Great to hear!"}',
        '```json\n{"emotion": "happy", "reply": "Great to hear!"}\n```',
        '```\n{"emotion": "happy", "reply": "Great to hear!"}\n```\nHope that helps.',
        'Sure! Here it is: {"emotion": "happy", "reply": "Great to hear!"} Anything else?',
        '{"Emotion": "HAPPY ", "Reply": "  Great   to hear! "}',
        '{"reply": "Great to hear!", "emotion": "Happy", "extra": {"nested": [1, 2]}}',
        'junk {not json} {"emotion": "happy", "reply": "Great to hear!"}',
    ],
)
def test_structured_answers_parse_without_fallback(raw):
    reply = parse_reply(raw, EMOTIONS)
    assert reply == Reply(text="Great to hear!", emotion="happy", fallback=None, raw=raw)
    assert reply.raw == raw


def test_emotion_is_returned_as_spelled_in_the_config():
    assert parse_reply('{"emotion": "CALM", "reply": "ok"}', ("Calm", "neutral")).emotion == "Calm"


def test_unknown_emotion_keeps_the_text_and_takes_the_sentiment_label(sentiment):
    emotions = tuple(dict.fromkeys((sentiment.label, "neutral")))
    reply = parse_reply('{"emotion": "ecstatic", "reply": "Wow."}', emotions, sentiment)
    assert reply.text == "Wow."
    assert reply.emotion == sentiment.label
    assert '"ecstatic"' in reply.fallback and "is not one of" in reply.fallback


def test_missing_emotion_falls_back_to_neutral_without_sentiment():
    reply = parse_reply('{"reply": "Okay."}', EMOTIONS)
    assert (reply.text, reply.emotion) == ("Okay.", "neutral")
    assert "missing" in reply.fallback


def test_sentiment_label_outside_the_set_falls_back_to_neutral_then_first(sentiment):
    others = tuple(e for e in ("happy", "calm", "sad", "angry", "excited") if e != sentiment.label)
    assert parse_reply("", others + ("neutral",), sentiment).emotion == "neutral"
    no_neutral = tuple(e for e in others if e != "neutral")
    assert parse_reply("", no_neutral, sentiment).emotion == no_neutral[0]


def test_prose_without_json_is_spoken_as_plain_text():
    reply = parse_reply("  I think that's\n lovely.  ", EMOTIONS)
    assert (reply.text, reply.emotion) == ("I think that's lovely.", "neutral")
    assert reply.fallback == "the output holds no JSON object"


@pytest.mark.parametrize("raw", ["", "   \n\t", "```json\n```"])
def test_empty_output_gives_the_default_text(raw):
    reply = parse_reply(raw, EMOTIONS)
    assert reply.text == DEFAULT_FALLBACK_TEXT
    assert reply.fallback is not None and "default text" in reply.fallback


def test_json_without_reply_is_not_spoken():
    reply = parse_reply('Answer: {"emotion": "happy", "text_out": "hi"} done', EMOTIONS)
    assert reply.text == "Answer: done"
    assert "no \"reply\" string" in reply.fallback


def test_empty_reply_string_uses_the_default_text_but_keeps_the_emotion():
    reply = parse_reply('{"emotion": "sad", "reply": "   "}', EMOTIONS)
    assert (reply.text, reply.emotion) == (DEFAULT_FALLBACK_TEXT, "sad")
    assert "empty" in reply.fallback


def test_truncated_json_falls_back():
    reply = parse_reply('{"emotion": "happy", "reply": "I was going to say', EMOTIONS)
    assert reply.fallback == "the output holds no JSON object"
    assert reply.text.startswith("{")  # the model's words are kept rather than dropped


def test_json_objects_finds_fenced_and_inline_objects_in_order():
    text = 'a {"x": 1} b ```json\n{"y": 2}\n``` c [1, 2] {"z": {"w": 3}}'
    assert json_objects(text) == [{"y": 2}, {"x": 1}, {"y": 2}, {"z": {"w": 3}}]


def test_empty_emotion_set_is_rejected():
    with pytest.raises(ValueError, match="emotions"):
        parse_reply("{}", ())


def test_messages_keep_history_order_roles_and_the_sentiment(sentiment):
    history = (
        Segment(1, "first user"),
        Segment(0, "first reply"),
        Segment(1, "second user"),
        Segment(2, "a third person"),
        Segment(0, "second reply"),
    )
    request = ReplyRequest("what now?", sentiment, history, EMOTIONS)
    messages = build_messages(request, user_speaker=1, reply_speaker=0)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[3]["content"] == "second user\n[speaker 2] a third person"
    assert [m["content"] for m in messages[1:5:2]] == ["first user", "second user\n[speaker 2] a third person"]
    for emotion in EMOTIONS:
        assert json.dumps(emotion) in messages[0]["content"]
    assert '"reply"' in messages[0]["content"] and '"emotion"' in messages[0]["content"]
    last = messages[-1]["content"]
    assert "what now?" in last
    assert sentiment.label in last
    assert f"arousal {sentiment.arousal:+.2f}" in last and f"valence {sentiment.valence:+.2f}" in last


def test_messages_without_sentiment_or_history():
    messages = build_messages(ReplyRequest("hello", None, (), EMOTIONS), 1, 0)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "voice" not in messages[1]["content"].lower() and "hello" in messages[1]["content"]
    assert describe_sentiment(None) is None


def test_history_ending_with_the_user_merges_into_the_current_turn():
    messages = build_messages(ReplyRequest("again", None, (Segment(1, "earlier"),), EMOTIONS), 1, 0)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"].startswith("earlier\n")


def test_plain_rendering_ends_with_the_assistant_cue():
    text = render_plain(build_messages(ReplyRequest("hi", None, (), EMOTIONS), 1, 0))
    assert text.startswith("System: ") and "\n\nUser: " in text and text.endswith("Assistant:")
