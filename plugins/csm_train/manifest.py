"""What to train on: a manifest (JSONL or CSV) or a folder of recordings with transcripts beside them.

**JSONL** (``.jsonl``, one object per line) or **CSV** (``.csv``, a header row) with fields:

- ``audio`` (required): the recording, a path relative to the manifest's folder or absolute; any
  WAV/FLAC/OGG at any rate and channel count (read through :func:`csm_core.audio.read_audio`);
- ``text`` (required): its transcript;
- ``speaker``: the speaker id, an integer >= 0 (default 0);
- ``conversation``: any string; rows with the same value are turns of one conversation, in manifest
  order, and earlier turns become the context of later ones;
- ``start``, ``end``: seconds, to use a part of the recording only.

**A folder**: every ``*.wav``/``*.flac``/``*.ogg`` below it (sorted by path) with a ``.txt`` of the same
name beside it holding the transcript; speaker 0, no conversations.

Rows that cannot be used are problems (:class:`Problem`) naming the manifest line (or the file), never dropped
silently; :func:`read_rows` returns them beside the good rows. Fields that are not listed above are
reported once each and ignored.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from csm_core.errors import CsmError

__all__ = ["AUDIO_SUFFIXES", "FIELDS", "DataError", "ManifestRow", "Problem", "read_rows"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
FIELDS = ("audio", "text", "speaker", "conversation", "start", "end")
MAX_SPEAKER_ID = 1_000_000


class DataError(CsmError):
    """The training data cannot be used at all (no manifest, no usable row, a bad row under ``--strict``)."""


@dataclass(frozen=True)
class ManifestRow:
    """One usable row: ``where`` names it for messages (``data.jsonl line 3``)."""

    where: str
    audio: Path
    text: str
    speaker: int = 0
    conversation: str | None = None
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class Problem:
    """A row that was skipped (or, under ``--strict``, stopped the run): where it is and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Rows:
    """What :func:`read_rows` found: good ``rows``, ``problems`` (rows skipped) and ``notes``."""

    rows: list[ManifestRow]
    problems: list[Problem]
    notes: list[str]


def read_rows(path: str | Path) -> Rows:
    """The rows of the manifest or folder at ``path``. Raises :class:`DataError` when ``path`` is none
    of those (missing, an unknown file type, unreadable)."""
    path = Path(path)
    if path.is_dir():
        return _folder_rows(path)
    if not path.exists():
        raise DataError(f"training data {str(path)!r} does not exist: give a manifest (.jsonl, .csv) or a folder of recordings")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DataError(
            f"training data {str(path)!r}: unknown manifest type {suffix or '(no suffix)'!r}; use .jsonl or .csv, "
            "or a folder of recordings with .txt transcripts"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest {str(path)!r}: {exc}") from None
    records = _csv_records(text) if suffix == ".csv" else _jsonl_records(text)
    rows, problems, unknown = [], [], {}
    for line, record in records:
        where = f"{path.name} line {line}"
        if isinstance(record, Problem):
            problems.append(Problem(where, record.reason))
            continue
        for name in record:
            if name not in FIELDS:
                unknown.setdefault(name, where)
        row = _row(where, record, path.parent)
        (problems if isinstance(row, Problem) else rows).append(row)
    notes = [f"{path.name}: field {name!r} (first at {where}) is not one of {', '.join(FIELDS)}; ignored"
             for name, where in unknown.items()]
    return Rows(rows, problems, notes)


def _jsonl_records(text: str):
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, Problem("", f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            yield line, Problem("", f"a JSON {type(record).__name__}, not an object with audio and text")
            continue
        yield line, record


def _csv_records(text: str):
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames or "audio" not in reader.fieldnames or "text" not in reader.fieldnames:
        raise DataError(f"CSV manifest: the header row must name the columns audio and text (found {reader.fieldnames})")
    for record in reader:
        line = reader.line_num  # the line the row ends on (a quoted cell may span lines)
        if None in record:
            yield line, Problem("", f"{len(record[None])} more cells than the header has columns")
            continue
        yield line, {k: v for k, v in record.items() if v not in (None, "")}


def _row(where: str, record: dict, base: Path) -> ManifestRow | Problem:
    audio, text = record.get("audio"), record.get("text")
    if not isinstance(audio, str) or not audio.strip():
        return Problem(where, "no audio path (field 'audio')")
    if not isinstance(text, str) or not text.strip():
        return Problem(where, "empty text (field 'text'): every clip needs its transcript")
    file = Path(audio).expanduser()
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        return Problem(where, f"audio file {str(file)!r} does not exist")
    speaker = record.get("speaker", 0)
    if isinstance(speaker, str) and speaker.strip().isdigit():
        speaker = int(speaker)
    if isinstance(speaker, bool) or not isinstance(speaker, int) or not 0 <= speaker <= MAX_SPEAKER_ID:
        return Problem(where, f"speaker {speaker!r} is not an integer id >= 0")
    conversation = record.get("conversation")
    if conversation is not None:
        conversation = str(conversation)
    times = {}
    for name in ("start", "end"):
        value = record.get(name)
        if value is None:
            times[name] = None
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            return Problem(where, f"{name} {value!r} is not a number of seconds")
        if not math.isfinite(value) or value < 0:
            return Problem(where, f"{name} {value!r} must be a finite number of seconds >= 0")
        times[name] = value
    if times["start"] is not None and times["end"] is not None and times["end"] <= times["start"]:
        return Problem(where, f"end {times['end']} is not after start {times['start']}")
    return ManifestRow(where, file, text.strip(), speaker, conversation, times["start"], times["end"])


def _folder_rows(folder: Path) -> Rows:
    rows, problems = [], []
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    for file in files:
        where = str(file.relative_to(folder))
        transcript = file.with_suffix(".txt")
        if not transcript.is_file():
            problems.append(Problem(where, f"no transcript {transcript.name} beside it"))
            continue
        try:
            text = transcript.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(where, f"transcript {transcript.name} is unreadable ({exc})"))
            continue
        if not text:
            problems.append(Problem(where, f"transcript {transcript.name} is empty"))
            continue
        rows.append(ManifestRow(where, file, " ".join(text.split())))
    if not files:
        raise DataError(f"folder {str(folder)!r} holds no recordings ({', '.join(AUDIO_SUFFIXES)})")
    return Rows(rows, problems, [])
