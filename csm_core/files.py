"""Files the caches and commands rely on: atomic writes (a reader sees the old file or the whole new one,
never half of it), several files replaced together, a file put back as it was when a command fails, and
content hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_NAME_ROOM = 100  # characters of a file's name kept in its temporary's name (NAME_MAX is 255 bytes)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a synced temporary file in the same folder and a rename.

    An interruption (a crash, Ctrl-C) leaves no partial file at ``path`` and no temporary file behind.
    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not the
    private 0600 of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _temporary_prefix(path: Path) -> str:
    """``.<name>.``, the name cut short so that a name of 255 bytes still leaves room for the suffix."""
    return f".{path.name[:_NAME_ROOM]}."


@contextmanager
def replace_together(*paths: str | Path) -> Iterator[list[Path]]:
    """Temporary paths to write ``paths`` into; each is moved over its path when the block succeeds.

    Each temporary sits in its path's folder and ends with the path's suffix (so writers that choose a
    format by the name still do). Nothing is renamed until every file was written: an exception in the
    block (a failed write, Ctrl-C) removes the temporaries and leaves every path as it was. The folders
    must exist. The renames happen one after another at the end; files get the permissions a plain
    write would give.
    """
    targets = [Path(path) for path in paths]
    temporaries: list[Path] = []
    try:
        for target in targets:
            fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=f".tmp{target.suffix}",
                                       dir=target.parent)
            os.close(fd)
            temporaries.append(Path(tmp))
        yield list(temporaries)
        for tmp in temporaries:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        for tmp, target in zip(temporaries, targets):
            os.replace(tmp, target)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)


@contextmanager
def restored_on_failure(path: str | Path, keep: Callable[[BaseException], bool] | None = None) -> Iterator[Path]:
    """Run the block; if it raises, put ``path`` back as it was before (its bytes, permissions and
    modification time; or no file, when there was none).

    For writers that must write ``path`` in place (a WAV that grows on disk while it is generated).
    When ``keep(exception)`` is true, what the block wrote stays (Ctrl-C once some audio was streamed).
    The old bytes are held in memory, so use it for files of a few hundred MB at most.
    """
    path = Path(path)
    before = path.read_bytes() if path.is_file() else None
    status = path.stat() if before is not None else None
    try:
        yield path
    except BaseException as exc:
        if keep is None or not keep(exc):
            if before is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, before)
                os.chmod(path, status.st_mode & 0o7777)
                os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
