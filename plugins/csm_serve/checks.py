"""Checks shared by the speech endpoints: the text, the model name, the emotion, the device.

Each raises an OpenAI-shaped 400 naming the parameter at fault, before anything is queued.
"""

from __future__ import annotations

from csm_core.errors import CsmError
from csm_core.user_text import check_text
from csm_serve.errors import bad_request
from csm_serve.options import ServeOptions


def checked_text(text: str, options: ServeOptions, param: str = "input") -> str:
    """``text`` if it can be spoken: at most ``max_text_chars`` characters, not empty, no control characters."""
    if len(text) > options.max_text_chars:
        raise bad_request(f"{param} is {len(text)} characters long; the maximum is {options.max_text_chars}",
                          param=param, code="string_above_max_length")
    try:
        return check_text(text, param)
    except CsmError as exc:
        raise bad_request(str(exc), param=param, code="invalid_value") from None


def checked_model(model: str, options: ServeOptions) -> str:
    if model not in options.models:
        raise bad_request(f"model {model!r} is not served here: choose one of {', '.join(options.models)}",
                          param="model", code="model_not_found")
    return model


def checked_emotion(emotion: str | None, emotions, param: str) -> str | None:
    """``emotion`` if the emotion map holds it (None passes)."""
    if emotion is not None and emotion not in emotions:
        raise bad_request(f"{param} {emotion!r} is not in the emotion map: choose one of {', '.join(sorted(emotions))}",
                          param=param, code="unknown_emotion")
    return emotion


def header_value(text: str, limit: int = 300) -> str:
    """``text`` made safe for an HTTP header: latin-1, one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat.encode("latin-1", "replace").decode("latin-1")[:limit]
