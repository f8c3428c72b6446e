"""The chat LM's side of a turn: the prompt it is given and the parsing of what it answers.

The model is asked for one JSON object ``{"emotion": <one of the configured emotions>, "reply": <text>}``.
:func:`build_messages` turns a :class:`~csm_core.stages.ReplyRequest` into chat messages (system
instruction, the conversation so far by speaker, then the user's transcript with the sentiment heard
in their voice). :func:`parse_reply` reads the answer robustly: the first JSON object anywhere in the
output (inside a ```json fence or surrounded by prose) that has a ``reply`` string. When there is no
usable structure it falls back to the plain text of the output (or :data:`DEFAULT_FALLBACK_TEXT`) and
to the sentiment's emotion, and says why in :attr:`~csm_core.stages.Reply.fallback`; never silently.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from csm_core.stages import Reply, ReplyRequest

DEFAULT_FALLBACK_TEXT = "Sorry, could you say that again?"
"""Spoken when the model's output holds no text at all."""

SYSTEM_PROMPT = (
    "You are a warm, concise voice assistant in a spoken conversation. Your answer is spoken aloud, "
    "so write plain sentences without lists, markdown or emojis, at most two or three sentences. "
    "Answer with exactly one JSON object and nothing else: "
    '{{"emotion": <one of {emotions}>, "reply": <what you say>}}. '
    "Choose the emotion your voice should carry, taking into account how the user sounded."
)

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def system_message(emotions: Sequence[str]) -> str:
    """The system instruction naming the allowed emotions (as JSON strings)."""
    if not emotions:
        raise ValueError("the reply needs at least one emotion to choose from (config table [emotions] is empty)")
    return SYSTEM_PROMPT.format(emotions=", ".join(json.dumps(e) for e in emotions))


def describe_sentiment(sentiment: Any) -> str | None:
    """``"happy (arousal +0.40, valence +0.20)"`` from an object with ``to_dict()`` or ``label``; None if absent."""
    if sentiment is None:
        return None
    data = sentiment.to_dict() if hasattr(sentiment, "to_dict") else {"label": getattr(sentiment, "label", None)}
    label = data.get("label")
    parts = [f"{name} {float(data[name]):+.2f}" for name in ("arousal", "valence") if isinstance(data.get(name), (int, float))]
    if label is None and not parts:
        return None
    return f"{label or 'unknown'}" + (f" ({', '.join(parts)})" if parts else "")


def user_turn(transcript: str, sentiment: Any) -> str:
    """The final user message: what they said, and how they sounded when the sentiment is known."""
    heard = describe_sentiment(sentiment)
    text = transcript.strip() or "(nothing intelligible)"
    if heard is None:
        return f"The user said: {text}"
    return f"The user said: {text}\nTheir voice sounded: {heard}"


def build_messages(request: ReplyRequest, user_speaker: int, reply_speaker: int) -> list[dict[str, str]]:
    """Chat messages ``[{"role", "content"}]``: system, history oldest first, then the user's turn.

    History segments of ``reply_speaker`` are ``assistant`` turns; every other speaker is a ``user``
    turn (speakers other than ``user_speaker`` are prefixed ``[speaker N]``). Consecutive turns of the
    same role are merged, since many chat templates require user/assistant to alternate.
    """
    messages = [{"role": "system", "content": system_message(request.emotions)}]
    turns: list[tuple[str, str]] = []
    for segment in request.history:
        if segment.speaker == reply_speaker:
            turns.append(("assistant", segment.text))
        elif segment.speaker == user_speaker:
            turns.append(("user", segment.text))
        else:
            turns.append(("user", f"[speaker {segment.speaker}] {segment.text}"))
    turns.append(("user", user_turn(request.transcript, request.sentiment)))
    for role, content in turns:
        if messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n" + content}
        else:
            messages.append({"role": role, "content": content})
    return messages


def render_plain(messages: Iterable[dict[str, str]]) -> str:
    """A prompt for a tokenizer without a chat template: ``Role: content`` lines, ending ``Assistant:``."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


def _object_spans(text: str) -> list[tuple[int, int, dict]]:
    """``(start, end, object)`` of each top-level JSON object in ``text``, left to right."""
    decoder = json.JSONDecoder()
    spans = []
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            spans.append((position, end, value))
        position = text.find("{", end)
    return spans


def json_objects(text: str) -> list[dict]:
    """Every JSON object in ``text``: those in ``` fences first, then any ``{...}`` in the prose, in order."""
    fenced = [obj for m in _FENCE.finditer(text) for _, _, obj in _object_spans(m.group(1))]
    return fenced + [obj for _, _, obj in _object_spans(text)]


def _lower_keys(obj: dict) -> dict:
    return {str(k).strip().lower(): v for k, v in obj.items()}


def fallback_emotion(sentiment: Any, emotions: Sequence[str]) -> str:
    """The sentiment's label when it is a configured emotion, else ``neutral`` if configured, else the first."""
    by_lower = {e.lower(): e for e in emotions}
    label = getattr(sentiment, "label", None)
    if isinstance(label, str) and label.strip().lower() in by_lower:
        return by_lower[label.strip().lower()]
    return by_lower.get("neutral", emotions[0])


def plain_text(raw: str) -> str:
    """The output as speakable text: fences unwrapped, JSON objects removed, whitespace collapsed."""
    text = _FENCE.sub(lambda m: m.group(1), raw)
    for start, end, _ in reversed(_object_spans(text)):
        text = text[:start] + " " + text[end:]
    return " ".join(text.split())


def parse_reply(raw: str, emotions: Sequence[str], sentiment: Any = None) -> Reply:
    """Read the model's ``raw`` output into a :class:`Reply` (see the module docstring for the rules).

    ``emotion`` is matched case-insensitively and returned as spelled in ``emotions``. ``fallback``
    is None only when the output held a JSON object with a non-empty ``reply`` string and a
    configured ``emotion``.
    """
    if not emotions:
        raise ValueError("emotions is empty: the config table [emotions] must name at least one")
    by_lower = {e.lower(): e for e in emotions}
    objects = [_lower_keys(o) for o in json_objects(raw)]
    structured = next((o for o in objects if isinstance(o.get("reply"), str)), None)
    if structured is None:
        text = plain_text(raw)
        if objects:
            reason = "the JSON object in the output has no \"reply\" string"
        elif raw.strip():
            reason = "the output holds no JSON object"
        else:
            reason = "the output is empty"
        return Reply(
            text=text or DEFAULT_FALLBACK_TEXT,
            emotion=fallback_emotion(sentiment, emotions),
            fallback=reason + ("" if text else "; used the default text"),
            raw=raw,
        )
    text = " ".join(structured["reply"].split())
    reasons = []
    if not text:
        text = DEFAULT_FALLBACK_TEXT
        reasons.append("the \"reply\" string is empty; used the default text")
    emotion = structured.get("emotion")
    if isinstance(emotion, str) and emotion.strip().lower() in by_lower:
        chosen = by_lower[emotion.strip().lower()]
    else:
        chosen = fallback_emotion(sentiment, emotions)
        shown = json.dumps(emotion) if emotion is not None else "missing"
        reasons.append(f"emotion {shown} is not one of {', '.join(emotions)}; used {chosen!r}")
    return Reply(text=text, emotion=chosen, fallback="; ".join(reasons) or None, raw=raw)
