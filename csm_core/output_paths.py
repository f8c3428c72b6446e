"""Where a command will write, checked before any model loads or any work starts.

A path the user gives for output is refused with a :class:`~csm_core.errors.CsmError` naming the flag,
the value and what to do when it could not be written at the end: an empty name, a folder given as
the file, a missing folder, a file in the way of a folder, a name the writer cannot produce (the audio
writer writes 16-bit PCM WAV, so an audio name must end in ``.wav``), a name longer than the file
system allows, a folder this process cannot create files in, a read-only file, something that is not
a regular file (a device, a pipe), or a file the same command reads (its input, the chat state).

Writability is proven, not guessed: a nameless temporary file is created in the folder and dropped at
once (``O_TMPFILE`` where the system has it), so read-only mounts and permission bits are both caught,
and nothing is left behind. Nothing here creates or changes a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from csm_core.errors import CsmError

_NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems alike

AUDIO_SUFFIX = ".wav"
"""The one audio format the writers produce (16-bit PCM WAV, see :func:`csm_core.audio.write_wav`)."""


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """``folder`` if this process can create files in it; else a CsmError naming ``what``."""
    folder = Path(folder)
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".csm-write-check-"):
            pass
    except OSError as exc:
        raise CsmError(
            f"{what}: cannot create files in folder {str(folder)!r} ({exc.strerror or exc}): "
            "make it writable or choose another folder"
        ) from None
    return folder


def check_output_folder(value: str | Path, what: str) -> Path:
    """A folder that a command fills (created when missing, with its parents): the path, or a CsmError.

    ``value`` must not be empty or an existing non-folder; the nearest existing folder above it must be
    a folder this process can create files in.
    """
    if not str(value).strip():
        raise CsmError(f"{what} is empty: give a folder to write into")
    path = Path(value)
    try:
        return _checked_output_folder(path, what)
    except OSError as exc:  # what the checks could not even look at (a name too long, a loop of links)
        raise CsmError(f"{what} {str(path)!r} cannot be used ({exc.strerror or exc}): choose another folder") from None


def _checked_output_folder(path: Path, what: str) -> Path:
    if path.exists() and not path.is_dir():
        raise CsmError(f"{what} {str(path)!r} is a file, not a folder: give a folder (it is created when missing)")
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a link to nowhere: mkdir would fail on it
            raise CsmError(
                f"{what} {str(path)!r}: {str(existing)!r} is a broken link; remove it or choose another folder"
            )
        existing = existing.parent
    if not existing.is_dir():
        raise CsmError(
            f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder; choose another folder"
        )
    check_writable_folder(existing, f"{what} {str(path)!r}")
    return path


def check_audio_output(value: str | Path, flag: str = "--output",
                       reads: Mapping[str, str | Path | None] | None = None) -> Path:
    """The file to write audio to for ``value`` (given with ``flag``), or a CsmError saying what to do.

    ``reads`` names the files the same command reads (``{"INPUT": path, "--state": path}``): the output
    may not be one of them. A symbolic link is followed: the file it points to is what gets written.
    """
    text = str(value)
    if not text.strip():
        raise CsmError(f"{flag} is empty: give a file name ending in {AUDIO_SUFFIX}, such as reply{AUDIO_SUFFIX}")
    path = Path(text)
    if any(len(os.fsencode(part)) > _NAME_MAX for part in path.parts):  # before any stat: it would raise
        raise CsmError(
            f"{flag} {text!r}: a name in it is longer than the {_NAME_MAX} bytes file systems allow; "
            "choose a shorter name"
        )
    try:
        return _checked_audio_output(text, path, flag, reads or {})
    except OSError as exc:  # what the checks could not even look at (a path too long in all, a loop of links)
        raise CsmError(f"{flag} {text!r} cannot be used ({exc.strerror or exc}): choose another path") from None


def _checked_audio_output(text: str, path: Path, flag: str, reads: Mapping[str, str | Path | None]) -> Path:
    if text.endswith(("/", os.sep)) or path.name in ("", ".", "..") or path.is_dir():
        raise CsmError(
            f"{flag} {text!r} is a folder: give a file name in it ending in {AUDIO_SUFFIX}, "
            f"such as {str(path / ('reply' + AUDIO_SUFFIX))!r}"
        )
    if path.name.lower() == AUDIO_SUFFIX:
        raise CsmError(f"{flag} {text!r} is only an extension: give a name before it, such as reply{AUDIO_SUFFIX}")
    if path.suffix.lower() != AUDIO_SUFFIX:
        found = f"ends in {path.suffix!r}" if path.suffix else "has no extension"
        raise CsmError(
            f"{flag} {text!r} {found}: csmctl writes 16-bit PCM WAV audio only; give a name ending in "
            f"{AUDIO_SUFFIX}, such as {str(path.with_name(path.stem + AUDIO_SUFFIX))!r}"
        )
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.exists() and not target.is_file():
        raise CsmError(f"{flag} {text!r} is not a regular file (a device, pipe or socket): give a file name")
    folder = target.parent
    if not folder.exists():
        raise CsmError(
            f"{flag} {text!r}: folder {str(folder)!r} does not exist; create it first "
            f"(mkdir -p {str(folder)!r}) or choose another folder"
        )
    if not folder.is_dir():
        raise CsmError(f"{flag} {text!r}: {str(folder)!r} is a file, not a folder; choose another path")
    limit = _name_max(folder)
    if len(os.fsencode(target.name)) > limit:
        raise CsmError(
            f"{flag} {text!r}: the file name is {len(os.fsencode(target.name))} bytes long and this file system "
            f"allows at most {limit}; choose a shorter name"
        )
    check_writable_folder(folder, f"{flag} {text!r}")
    if target.exists() and not os.access(target, os.W_OK):
        raise CsmError(f"{flag} {text!r} is read-only: make it writable (chmod u+w) or choose another name")
    for name, read in reads.items():
        if read is not None and _same_file(target, Path(read)):
            raise CsmError(
                f"{flag} {text!r} is also {name}, which this command reads: writing it would destroy it; "
                "choose another output name"
            )
    return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False
