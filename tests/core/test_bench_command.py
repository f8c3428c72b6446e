"""`csmctl bench` end to end, as a subprocess of ``python -m csm_core.bench`` on the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def bench(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csm_core.bench", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env}, timeout=300)


def test_importing_the_command_imports_nothing_heavy():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import csm_core.bench.command"],
                            capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "csm_core" in imported
    assert not imported & {"torch", "onnxruntime", "transformers", "numpy", "matplotlib"}


@pytest.mark.slow
def test_bench_writes_json_markdown_and_png(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    result = bench("--backends", "pytorch,no-such-backend", "--optimizers", "none", "--presets", "tiny",
                   "--frames", "2", "--repeats", "1", "--warmup", "0", "--bandwidth-gbs", "20", "--threads", "1",
                   "--out", str(out), env={"CSM_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    for name in ("bench.json", "bench.md", "bench.png"):
        assert f"wrote {out / name}" in result.stdout
    document = json.loads((out / "bench.json").read_text())
    ran, skipped = document["cells"]
    assert ran["id"] == "tiny/pytorch/none" and ran["status"] == "ok" and ran["figures"]["frames"] == 2
    assert ran["floor"]["bandwidth_bytes_per_s"] == 20e9
    assert skipped["status"] == "skipped" and "unknown backend 'no-such-backend'" in skipped["reason"]
    assert document["machine"]["cores"] == os.cpu_count() and document["run"]["threads"] == 1
    table = (out / "bench.md").read_text()
    assert "| pytorch | none |" in table and "skipped: unknown backend 'no-such-backend'" in table
    assert "Physical limit, preset `tiny` at fp32" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--presets", "huge"], ["unknown preset 'huge'", "tiny"]),
        (["--frames", "0"], ["--frames=0"]),
        (["--optimizers", "none+x"], ["--optimizers", "'none' alone"]),
        (["--device", "gpu"], ["device", "cuda:N"]),
    ],
)
def test_bad_input_fails_before_anything_runs(args, words, tmp_path):
    result = bench("--out", str(tmp_path / "out"), *args, env={})
    assert result.returncode == 2
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "out" / "bench.json").exists()
