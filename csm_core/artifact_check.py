"""Checksum files: a cached artifact is loaded only when its bytes are the bytes that were written.

Every on-disk cache of the project (the graphs, engines and other artifacts backends build, voice
profiles) keeps beside its main file ``<name>.sha256``:
the SHA-256 of each file of the artifact, one ``<hex>  <file name>`` line each (``sha256sum`` format,
names relative to the folder, the main file first; a bare hash line names the main file). It is
removed first when an artifact is replaced and written last, atomically, so an interrupted write leaves
an artifact without a checksum file, which is rebuilt, never loaded.

:func:`verify` (and :func:`problem_with`, :func:`read_verified`) say why an artifact cannot be used:
the checksum file is missing or malformed, a file it lists is missing, truncated or changed. The caller
reports the reason through its stage's ``report`` and rebuilds the artifact, or refuses with an error
that names the file and what to do where it cannot be rebuilt. Each file is hashed once per check.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

from csm_core.files import file_sha256, write_atomic

CHECKSUM_SUFFIX = ".sha256"
_LINE = re.compile(r"^([0-9a-f]{64})(?:(?:  | \*)(.+))?$")  # sha256sum's text and binary modes


class ArtifactMismatch(ValueError):
    """A cached artifact that must not be loaded; the message says why (for "rebuilding X: <why>")."""


def checksum_path(path: str | Path) -> Path:
    """``<path>.sha256``: the checksum file of the artifact whose main file is ``path``."""
    return Path(str(path) + CHECKSUM_SUFFIX)


def checksum_text(hashes: dict[str, str]) -> str:
    """The checksum file's text for {file name: sha256} (``sha256sum`` format, in the given order)."""
    return "".join(f"{digest}  {name}\n" for name, digest in hashes.items())


def identity(path: str | Path, hashes: dict[str, str]) -> str:
    """One SHA-256 naming the whole artifact: the main file's for a single file, else that of the
    checksum text (graph and data files), so derived files can be named by it without hashing again."""
    if len(hashes) == 1:
        return hashes[Path(path).name]
    return hashlib.sha256(checksum_text(hashes).encode()).hexdigest()


def read_checksums(path: str | Path) -> dict[str, str]:
    """{file name: recorded SHA-256} from ``path``'s checksum file, the main file included.

    Raises :class:`ArtifactMismatch` when the checksum file is missing, unreadable, malformed (a line
    that is not ``<64 hex>  <name>``, a name outside the folder, a file listed twice) or does not list
    ``path`` itself.
    """
    path = Path(path)
    sums = checksum_path(path)
    try:
        text = sums.read_bytes().decode("ascii")
    except FileNotFoundError:
        raise ArtifactMismatch(f"its checksum file {sums.name} is missing (an interrupted write?)") from None
    except UnicodeDecodeError:
        raise ArtifactMismatch(
            f"its checksum file {sums.name} is not a sha256sum listing (it holds non-text bytes)"
        ) from None
    except OSError as exc:
        raise ArtifactMismatch(f"its checksum file {sums.name} is unreadable ({exc})") from None
    recorded: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        name = (match.group(2) or path.name).strip() if match else ""
        if match is None or "/" in name or "\\" in name or name in (".", ".."):
            raise ArtifactMismatch(f"line {number} of its checksum file {sums.name} is not '<sha256>  <file name>'")
        if name in recorded:
            raise ArtifactMismatch(f"its checksum file {sums.name} lists {name} twice")
        recorded[name] = match.group(1)
    if path.name not in recorded:
        raise ArtifactMismatch(f"its checksum file {sums.name} does not list {path.name}")
    return recorded


def _compare(name: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise ArtifactMismatch(
            f"the checksum {actual[:12]} of {name} does not match the recorded {expected[:12]} (corrupted or truncated)"
        )


def verify(path: str | Path) -> dict[str, str]:
    """The recorded {file name: SHA-256} of the artifact at ``path`` once every listed file exists and
    hashes to its record; :class:`ArtifactMismatch` saying what is wrong otherwise."""
    path = Path(path)
    recorded = read_checksums(path)
    for name, expected in recorded.items():
        member = path.with_name(name)
        try:
            actual = file_sha256(member)
        except FileNotFoundError:
            raise ArtifactMismatch(f"{name} is missing (its checksum file lists it)") from None
        except OSError as exc:
            raise ArtifactMismatch(f"{name} is unreadable ({exc})") from None
        _compare(name, actual, expected)
    return recorded


def problem_with(path: str | Path) -> str | None:
    """Why the artifact at ``path`` must not be loaded (see :func:`verify`), or None when it verifies."""
    try:
        verify(path)
    except ArtifactMismatch as exc:
        return str(exc)
    return None


def read_verified(path: str | Path) -> bytes:
    """The bytes of the single-file artifact at ``path``, read once and checked against its checksum
    file (other files it lists are checked too); :class:`ArtifactMismatch` otherwise."""
    path = Path(path)
    recorded = read_checksums(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactMismatch(f"{path.name} is missing (its checksum file lists it)") from None
    except OSError as exc:
        raise ArtifactMismatch(f"{path.name} is unreadable ({exc})") from None
    _compare(path.name, hashlib.sha256(data).hexdigest(), recorded[path.name])
    for name, expected in recorded.items():
        if name != path.name:
            member = path.with_name(name)
            if not member.is_file():
                raise ArtifactMismatch(f"{name} is missing (its checksum file lists it)")
            _compare(name, file_sha256(member), expected)
    return data


def write_checksums(path: str | Path, hashes: dict[str, str]) -> Path:
    """Write ``path``'s checksum file (atomically) for {file name: SHA-256}, the main file first."""
    path = Path(path)
    if path.name not in hashes:
        raise ValueError(f"the checksums of {path.name} must include the file itself")
    ordered = {path.name: hashes[path.name], **{n: h for n, h in hashes.items() if n != path.name}}
    return write_atomic(checksum_path(path), checksum_text(ordered))


def seal(path: str | Path, members: Iterable[str | Path] = ()) -> dict[str, str]:
    """Hash ``path`` and the ``members`` beside it (files written by someone else, in place) and write
    the checksum file; returns {file name: SHA-256}."""
    path = Path(path)
    hashes = {path.name: file_sha256(path)}
    for member in members:
        member = Path(member)
        if member.parent.resolve() != path.parent.resolve():
            raise ValueError(f"{member} is not beside {path.name}: an artifact's files share one folder")
        hashes[member.name] = file_sha256(member)
    write_checksums(path, hashes)
    return hashes


def discard(path: str | Path, members: Iterable[str | Path] = ()) -> None:
    """Remove an artifact: its checksum file first (so no half-removed artifact verifies), then its files."""
    path = Path(path)
    checksum_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    for member in members:
        Path(member).unlink(missing_ok=True)


def store(path: str | Path, data: bytes) -> Path:
    """Write the single-file artifact ``data`` to ``path`` and then its checksum file, each atomically
    (the old checksum file is removed first); returns ``path``."""
    path = Path(path)
    data = bytes(data)
    checksum_path(path).unlink(missing_ok=True)
    write_atomic(path, data)
    write_checksums(path, {path.name: hashlib.sha256(data).hexdigest()})
    return path


def install(staged: str | Path, path: str | Path) -> dict[str, str]:
    """Move the finished file ``staged`` (in ``path``'s folder) into place as a single-file artifact:
    hash and sync it, remove the old checksum file, rename, write the new checksum file."""
    staged, path = Path(staged), Path(path)
    digest = file_sha256(staged)
    with open(staged, "rb+") as handle:
        os.fsync(handle.fileno())
    checksum_path(path).unlink(missing_ok=True)
    os.replace(staged, path)
    hashes = {path.name: digest}
    write_checksums(path, hashes)
    return hashes
