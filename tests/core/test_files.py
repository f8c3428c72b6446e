"""Atomic writes and content hashes (csm_core.files)."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from csm_core.files import file_sha256, write_atomic


def test_write_atomic_gives_the_permissions_of_a_plain_write(tmp_path):
    previous = os.umask(0o022)
    try:
        written = write_atomic(tmp_path / "sub" / "report.json", "{}")
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
    assert written.read_text() == "{}"


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "state.json", "old")

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_file_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3 << 20)  # more than one 1 MiB chunk
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
