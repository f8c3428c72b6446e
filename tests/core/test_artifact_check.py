"""csm_core.artifact_check: checksum files written with an artifact, every damage detected on load."""

from __future__ import annotations

import hashlib

import pytest

from csm_core.artifact_check import (
    ArtifactMismatch,
    checksum_path,
    discard,
    identity,
    install,
    problem_with,
    read_checksums,
    read_verified,
    seal,
    store,
    verify,
)

DATA = bytes(range(256)) * 16


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_store_writes_the_file_then_its_checksum_file_and_reads_back(tmp_path):
    path = store(tmp_path / "entry.bin", DATA)
    assert checksum_path(path).read_text() == f"{sha(DATA)}  entry.bin\n"
    assert read_verified(path) == DATA and verify(path) == {"entry.bin": sha(DATA)} and problem_with(path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.bin", "entry.bin.sha256"]  # no temporaries


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncated", "does not match the recorded"),
        ("bytes-flipped", "does not match the recorded"),
        ("file-missing", "entry.bin is missing"),
        ("checksum-missing", "entry.bin.sha256 is missing"),
        ("checksum-wrong", "does not match the recorded"),
        ("checksum-garbage", "not a sha256sum listing"),
        ("checksum-malformed", "line 1"),
        ("checksum-other-file", "does not list entry.bin"),
        ("checksum-empty", "does not list entry.bin"),
    ],
)
def test_every_damage_is_named(tmp_path, damage, reason):
    path = store(tmp_path / "entry.bin", DATA)
    sums = checksum_path(path)
    if damage == "truncated":
        path.write_bytes(DATA[:100])
    elif damage == "bytes-flipped":
        middle = len(DATA) // 2
        path.write_bytes(DATA[:middle] + bytes([DATA[middle] ^ 1]) + DATA[middle + 1:])
    elif damage == "file-missing":
        path.unlink()
    elif damage == "checksum-missing":
        sums.unlink()
    elif damage == "checksum-wrong":
        sums.write_text(f"{'a' * 64}  entry.bin\n")
    elif damage == "checksum-garbage":
        sums.write_bytes(b"\xff\x00\x13")
    elif damage == "checksum-malformed":
        sums.write_text("not a hash  entry.bin\n")
    elif damage == "checksum-other-file":
        sums.write_text(f"{sha(DATA)}  other.bin\n")
    else:
        sums.write_text("\n")
    for check in (verify, read_verified):
        with pytest.raises(ArtifactMismatch, match=reason):
            check(path)
    assert reason in problem_with(path)


def test_checksum_lines_in_sha256sum_formats(tmp_path):
    path = tmp_path / "graph.onnx"
    path.write_bytes(DATA)
    (tmp_path / "graph.onnx.data").write_bytes(b"weights")
    sums = checksum_path(path)
    sums.write_text(f"{sha(DATA)}\n{sha(b'weights')} *graph.onnx.data\n")  # a bare hash names the file itself
    assert read_checksums(path) == {"graph.onnx": sha(DATA), "graph.onnx.data": sha(b"weights")}
    assert problem_with(path) is None
    sums.write_text(f"{sha(DATA)}  graph.onnx\n{sha(b'x')}  ../elsewhere\n")
    assert "line 2" in problem_with(path)  # a listed name never leaves the folder
    sums.write_text(f"{sha(DATA)}  graph.onnx\n{sha(DATA)}  graph.onnx\n")
    assert "twice" in problem_with(path)


def test_seal_lists_members_and_each_is_verified(tmp_path):
    path, data = tmp_path / "graph.onnx", tmp_path / "graph.onnx.data"
    path.write_bytes(DATA)
    data.write_bytes(b"weights")
    hashes = seal(path, [data])
    assert list(hashes) == ["graph.onnx", "graph.onnx.data"] and verify(path) == hashes
    assert read_verified(path) == DATA
    assert identity(path, hashes) == sha(checksum_path(path).read_bytes())  # graph and data, one name
    assert identity(path, {"graph.onnx": sha(DATA)}) == sha(DATA)
    data.write_bytes(b"weighty")
    assert "graph.onnx.data" in problem_with(path)
    with pytest.raises(ArtifactMismatch, match="graph.onnx.data"):
        read_verified(path)
    data.unlink()
    assert "graph.onnx.data is missing" in problem_with(path)
    with pytest.raises(ValueError, match="beside"):
        seal(path, [tmp_path.parent / "elsewhere.data"])


def test_install_moves_a_staged_file_into_place_with_its_checksum(tmp_path):
    path = store(tmp_path / "model.opt.onnx", b"old")
    staged = tmp_path / ".model.opt.onnx.123.tmp"
    staged.write_bytes(DATA)
    assert install(staged, path) == {"model.opt.onnx": sha(DATA)}
    assert not staged.exists() and read_verified(path) == DATA


def test_discard_removes_the_checksum_file_and_the_files(tmp_path):
    path, data = tmp_path / "graph.onnx", tmp_path / "graph.onnx.data"
    path.write_bytes(DATA)
    data.write_bytes(b"weights")
    seal(path, [data])
    discard(path, [data])
    assert list(tmp_path.iterdir()) == []
    discard(path)  # nothing left: no error
