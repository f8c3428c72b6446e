"""Text a user gives to be spoken or answered, checked once at the edge (the CLI, before any model loads,
and :class:`csm_core.pipeline.Pipeline` for callers that use it directly).

:func:`check_text` refuses, with a :class:`~csm_core.errors.CsmError` naming where the text came from:

- empty text, or text of whitespace only;
- text that cannot be encoded as UTF-8 (bytes that were not UTF-8 on the command line arrive as lone
  surrogates);
- control characters other than tab, newline and carriage return (binary data pasted by mistake);
- more than :data:`MAX_TEXT_CHARS` characters.
"""

from __future__ import annotations

from csm_core.errors import CsmError

MAX_TEXT_CHARS = 4096
"""The longest text taken (characters). One turn speaks at most 2048 frames, 163.8 s of audio; read at
a brisk 20 characters a second that is under 3300 characters, so longer text could never be spoken in
one turn. CSM's 2048 positions (text tokens and audio frames of the whole context) cap it further, which
is checked once the model's tokenizer is loaded."""

_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


def check_text(text: str, what: str) -> str:
    """``text`` if it can be spoken; else a CsmError that names ``what`` (``"--text"``, ``"TEXT"``)."""
    if not text.strip():
        raise CsmError(f"{what} is empty: give the words to speak")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CsmError(
            f"{what} is not valid UTF-8 (an undecodable byte at character {exc.start}): "
            "give the text in UTF-8"
        ) from None
    for index, char in enumerate(text):
        if (ord(char) < 32 or ord(char) == 127) and char not in _ALLOWED_CONTROLS:
            raise CsmError(
                f"{what} contains the control character U+{ord(char):04X} at character {index}: remove it"
            )
    if len(text) > MAX_TEXT_CHARS:
        raise CsmError(
            f"{what} is {len(text)} characters long; at most {MAX_TEXT_CHARS} can be spoken in one turn: "
            "split it into several"
        )
    return text
