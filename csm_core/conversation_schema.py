"""The rules every value of a conversation state file meets, checked when it is loaded.

:func:`parse_state` turns the JSON payload of a state file (format ``csm-multi-conversation``) into
plain checked values, or raises :class:`csm_core.errors.CsmError` naming the file, the field path
(``segments[2].speaker``, ``segments[0].codes[3][7]``) and the value. The rules:

- the top level is an object with ``format``, ``version`` (1 or 2; 1 holds ``segments`` only),
  ``turns``, ``voice`` and ``segments``, and no other key;
- ``turns``: an integer >= 0;
- ``voice``: null, or ``{path, sha256, text, speaker}`` with a non-empty path, a lowercase hex sha256,
  a non-blank transcript and a speaker that is null or an integer >= 0;
- ``segments``: a list of ``{speaker, text, codes}``: speaker an integer >= 0, text a string (never
  null: it would come back as the string "None"), codes null or a rectangular [K][F] list of integers
  >= 0 with K >= 1 and F >= 1, every segment with the same K.

What needs the models (K equal to the codec's codebooks, each code below its codebook size) is
checked by :func:`check_codes_fit` once their sizes are known, before anything is generated.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from csm_core.errors import CsmError

FIX = "fix the value, or delete the file to start a new conversation"
TOP_KEYS = ("format", "version", "turns", "voice", "segments")
VOICE_KEYS = ("path", "sha256", "text", "speaker")
SEGMENT_KEYS = ("speaker", "text", "codes")

_repr = reprlib.Repr()
_repr.maxlist = _repr.maxdict = 4
_repr.maxstring = _repr.maxother = 60


@dataclass(frozen=True)
class ParsedSegment:
    speaker: int
    text: str
    codes: np.ndarray | None  # [K, F] int64


@dataclass(frozen=True)
class ParsedState:
    version: int
    turns: int
    voice: dict | None  # the checked voice reference fields
    segments: list[ParsedSegment]


class _Fields:
    """Raises the errors of one file: ``where`` names it; ``context`` says which part is malformed."""

    def __init__(self, where: str, fix: str = FIX):
        self.where, self.fix = where, fix

    def fail(self, field: str, value: Any, rule: str, part: str = "", described: str | None = None) -> None:
        """Raise: ``<where>[ has a malformed <part>]: <field> = <value>: <rule>; <fix>``; ``described``
        replaces ``= <value>`` (``has 3 frames``)."""
        shown = described or ("is missing" if value is _MISSING else f"= {_show(value)}")
        head = f"{self.where} has a malformed {part}: " if part else f"{self.where}: "
        raise CsmError(f"{head}{field} {shown}: {rule}; {self.fix}")

    def keys(self, value: dict, allowed: tuple[str, ...], field: str, part: str = "") -> None:
        unknown = [key for key in value if key not in allowed]
        if unknown:
            name = f"{field}.{unknown[0]}" if field else str(unknown[0])
            self.fail(name, value[unknown[0]], f"is not a field of this format (known: {', '.join(allowed)})", part)

    def integer(self, value: Any, field: str, part: str = "", optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if value is _MISSING or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(field, value, "must be an integer >= 0" + (" or null" if optional else ""), part)
        return value

    def string(self, value: Any, field: str, part: str = "", blank: bool = True) -> str:
        if not isinstance(value, str) or (not blank and not value.strip()):
            self.fail(field, value, "must be a string" if blank else "must be a non-empty string", part)
        return value


_MISSING = object()


def _show(value: Any) -> str:
    """``value`` as it reads in the JSON file (null, true), shortened."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _repr.repr(value)


def parse_state(payload: Any, where: str, format_name: str, version: int, fix: str = FIX) -> ParsedState:
    """The checked values of a state file's JSON ``payload`` (see the module docstring); ``fix`` ends
    each error with what to do."""
    fields = _Fields(where, fix)
    if not isinstance(payload, dict) or payload.get("format") != format_name:
        raise CsmError(f"{where} is not a csm-multi conversation file (no \"format\": {format_name!r})")
    fields.keys(payload, TOP_KEYS, "")
    found = payload.get("version", _MISSING)
    if found not in (1, version) or isinstance(found, bool):
        shown = "no version" if found is _MISSING else f"version {found!r}"
        raise CsmError(
            f"{where} has {shown}; this csm-multi reads version {version} (and 1): use the csm-multi "
            "that wrote it, or start a new conversation"
        )
    segments = _segments(fields, payload.get("segments", _MISSING))
    if found == 1:  # segments only: no voice, turns counted from the segments
        return ParsedState(version, len(segments) // 2, None, segments)
    turns = fields.integer(payload.get("turns", _MISSING), "turns")
    return ParsedState(version, turns, _voice(fields, payload.get("voice", _MISSING)), segments)


def _voice(fields: _Fields, voice: Any) -> dict | None:
    if voice is None:
        return None
    part = "voice reference"
    if not isinstance(voice, dict):
        fields.fail("voice", voice, "must be null or an object with path, sha256, text and speaker", part)
    fields.keys(voice, VOICE_KEYS, "voice", part)
    path = fields.string(voice.get("path", _MISSING), "voice.path", part, blank=False)
    sha = voice.get("sha256", _MISSING)
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        fields.fail("voice.sha256", sha, "must be the 64 lowercase hex digits of a sha256", part)
    text = fields.string(voice.get("text", _MISSING), "voice.text", part, blank=False)
    speaker = fields.integer(voice.get("speaker"), "voice.speaker", part, optional=True)
    return {"path": path, "sha256": sha, "text": text, "speaker": speaker}


def _segments(fields: _Fields, items: Any) -> list[ParsedSegment]:
    if not isinstance(items, list):
        fields.fail("segments", items, "must be a list of segments")
    segments: list[ParsedSegment] = []
    codebooks: tuple[int, int] | None = None  # (K, index of the first segment with codes)
    for index, item in enumerate(items):
        name, part = f"segments[{index}]", f"segment {index}"
        if not isinstance(item, dict):
            fields.fail(name, item, "must be an object with speaker, text and codes", part)
        fields.keys(item, SEGMENT_KEYS, name, part)
        speaker = fields.integer(item.get("speaker", _MISSING), f"{name}.speaker", part)
        text = fields.string(item.get("text", _MISSING), f"{name}.text", part)
        codes = _codes(fields, item.get("codes", _MISSING), f"{name}.codes", part)
        if codes is not None:
            if codebooks is None:
                codebooks = (codes.shape[0], index)
            elif codes.shape[0] != codebooks[0]:
                fields.fail(
                    f"{name}.codes", None,
                    f"segments[{codebooks[1]}].codes has {codebooks[0]}, and every segment comes from one codec",
                    part, described=f"has {codes.shape[0]} codebooks",
                )
        segments.append(ParsedSegment(speaker, text, codes))
    return segments


def _codes(fields: _Fields, codes: Any, name: str, part: str) -> np.ndarray | None:
    """``codes`` as int64 [K, F], or the error naming the first offending row or element."""
    if codes is None:
        return None
    rule = "must be null or a [K][F] list of integer codes (K codebooks, F >= 1 frames)"
    if not isinstance(codes, list) or not codes:
        fields.fail(name, codes, rule, part)
    for k, row in enumerate(codes):
        if not isinstance(row, list) or not row:
            fields.fail(f"{name}[{k}]", row, "must be a non-empty list of integer codes (one per frame)", part)
        if len(row) != len(codes[0]):
            fields.fail(
                f"{name}[{k}]", None, f"{name}[0] has {len(codes[0])}, and every codebook has one code per frame",
                part, described=f"has {len(row)} frames",
            )
    try:
        array = np.asarray(codes)
    except (OverflowError, ValueError):
        array = np.asarray(codes, dtype=object)
    if array.dtype.kind != "i" or (array < 0).any():
        for k, row in enumerate(codes):
            for f, code in enumerate(row):
                if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < 2**63:
                    fields.fail(f"{name}[{k}][{f}]", code, "must be an integer code >= 0", part)
    return array.astype(np.int64, copy=False)


def check_codes_fit(segments: list, num_codebooks: int, codebook_size: int, where: str) -> None:
    """Raise CsmError unless every segment's codes are [num_codebooks, F] with each code in
    [0, codebook_size): what a state file must meet to be spoken after by this model's codec."""
    for index, segment in enumerate(segments):
        codes = segment.codes
        if codes is None:
            continue
        name = f"segments[{index}].codes"
        if codes.shape[0] != num_codebooks:
            raise CsmError(
                f"{where}: {name} has {codes.shape[0]} codebooks, but this model's codec has {num_codebooks}: "
                "the conversation was made with another model; use that model, or delete the file to start a "
                "new conversation"
            )
        too_big = np.argwhere(codes >= codebook_size)
        if too_big.size:
            k, f = (int(i) for i in too_big[0])
            raise CsmError(
                f"{where}: {name}[{k}][{f}] = {int(codes[k, f])}: a code must be below the codec's codebook size "
                f"{codebook_size} (the conversation was made with another model, or the file was edited); {FIX}"
            )
