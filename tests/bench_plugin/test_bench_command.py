"""`csmctl bench` end to end, as a subprocess of ``python -m csm_bench`` on the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def bench(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csm_bench", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env}, timeout=300)


def test_importing_the_command_imports_nothing_heavy():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import csm_bench.command"],
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


@pytest.mark.slow
def test_utterances_speak_many_batched_in_the_batched_cell_only_and_match_the_baseline(tmp_path):
    """--utterances 3: every cell speaks 3 texts per run; batched-generation batches them, same codes."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    result = bench("--backends", "pytorch", "--optimizers", "none,batched-generation", "--presets", "tiny",
                   "--frames", "2", "--repeats", "1", "--warmup", "0", "--utterances", "3", "--bandwidth-gbs", "20",
                   "--threads", "1", "--out", str(out), env={"CSM_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "bench.json").read_text())
    assert document["run"]["utterances"] == 3
    base, batched = document["cells"]
    assert [base["status"], batched["status"]] == ["ok", "ok"], [base["reason"], batched["reason"]]
    assert base["figures"]["speak_paths"] == ["sequential"] * 3 and base["figures"]["batch_sizes"] == [1] * 3
    assert batched["figures"]["speak_paths"] == ["batched"] * 3 and batched["figures"]["batch_sizes"] == [3] * 3
    for cell in (base, batched):  # figures over the 3 utterances of the run
        figures = cell["figures"]
        assert figures["frames"] == 3 * 2
        (seconds,) = figures["generation_seconds"]
        assert figures["frames_per_second"] == pytest.approx(6 / seconds)
        assert figures["real_time_factor"] == pytest.approx(seconds / (6 * 0.08), rel=1e-3)
        assert 0 < figures["time_to_first_audio_s"] < seconds
    # sequentially, the first chunk comes within the first of three utterances
    assert base["figures"]["time_to_first_audio_s"] < base["figures"]["generation_seconds"][0] / 2
    assert batched["quality"]["code_agreement"] == 1.0 and batched["quality"]["versus"] == "tiny/pytorch/none"
    assert batched["effects"] == {"batched-generation": "exact"}
    table = (out / "bench.md").read_text()
    assert "x 3 utterances per run" in table and "3 utterances per run, batched (largest batch 3)" in table


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--presets", "huge"], ["unknown preset 'huge'", "tiny"]),
        (["--frames", "0"], ["--frames=0"]),
        (["--optimizers", "none+x"], ["--optimizers", "'none' alone"]),
        (["--device", "gpu"], ["device", "cuda:N"]),
        (["--utterances", "0"], ["--utterances=0", ">= 1"]),
    ],
)
def test_bad_input_fails_before_anything_runs(args, words, tmp_path):
    result = bench("--out", str(tmp_path / "out"), *args, env={})
    assert result.returncode == 2
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "out" / "bench.json").exists()
