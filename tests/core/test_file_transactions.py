"""Several files replaced together, a file put back after a failed in-place write, and temporaries for
names near the file system's limit (csm_core.files)."""

from __future__ import annotations

import os
import stat

import pytest

from csm_core.files import replace_together, restored_on_failure, write_atomic


def test_replace_together_renames_every_file_only_when_all_were_written(tmp_path):
    first, second = tmp_path / "bench.json", tmp_path / "bench.png"
    first.write_text("old json")
    with pytest.raises(RuntimeError):
        with replace_together(first, second) as (a, b):
            assert a.parent == tmp_path and a.suffix == ".json" and b.suffix == ".png"
            a.write_text("new json")
            raise RuntimeError("the plot failed")
    assert first.read_text() == "old json" and not second.exists()
    assert sorted(os.listdir(tmp_path)) == ["bench.json"]  # no temporary left

    with replace_together(first, second) as (a, b):
        a.write_text("new json")
        b.write_bytes(b"png")
    assert first.read_text() == "new json" and second.read_bytes() == b"png"
    assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.png"]


def test_restored_on_failure_puts_back_bytes_mode_and_time(tmp_path):
    path = tmp_path / "out.wav"
    path.write_bytes(b"old audio")
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    with pytest.raises(OSError):
        with restored_on_failure(path):
            path.write_bytes(b"half of the new aud")
            raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"old audio"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_mtime_ns == 2_000_000_000


def test_restored_on_failure_removes_a_file_that_was_not_there(tmp_path):
    path = tmp_path / "new.wav"
    with pytest.raises(ValueError):
        with restored_on_failure(path):
            path.write_bytes(b"partial")
            raise ValueError("generation failed")
    assert not path.exists()


def test_restored_on_failure_keeps_what_keep_accepts(tmp_path):
    path = tmp_path / "out.wav"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with restored_on_failure(path, keep=lambda exc: isinstance(exc, KeyboardInterrupt)):
            path.write_bytes(b"streamed so far")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"streamed so far"


def test_a_name_of_255_bytes_still_gets_a_temporary(tmp_path):
    name = "x" * 251 + ".wav"
    assert write_atomic(tmp_path / name, b"data").read_bytes() == b"data"
    with replace_together(tmp_path / name) as (temporary,):
        temporary.write_bytes(b"more")
    assert (tmp_path / name).read_bytes() == b"more"
