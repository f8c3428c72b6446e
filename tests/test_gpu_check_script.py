"""``benchmarks/gpu_check.sh``: it refuses clearly where there is no GPU, and reads its results right.

The GPU run itself is recorded in docs/benchmarks.md; here (no GPU) the script must stop at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402


def test_without_a_gpu_it_stops_at_once_with_an_error_line_and_writes_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the refusal is for machines without one")
    out = tmp_path / "gpu"
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True,
                            text=True, timeout=120, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the GPU check needs a CUDA GPU"), result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "file"
    out.write_text("keep")
    assert gpu_check.main([str(out)]) == 2
    assert out.read_text() == "keep"


def cell(backend: str, optimizers: list[str], precision: str, fps: float, ttfa: float | None, x_floor: float) -> dict:
    return {"id": f"csm-1b/{backend}/{'+'.join(optimizers) or 'none'}", "preset": "csm-1b", "backend": backend,
            "optimizers": optimizers, "status": "ok", "precision": precision,
            "figures": {"frames_per_second": fps, "time_to_first_audio_s": ttfa, "x_floor": x_floor}}


def test_targets_read_the_fastest_bf16_pytorch_cell_against_the_reference():
    mixed = "backbone bf16, decoder bf16, heads fp32"
    document = {"cells": [
        cell("pytorch", [], "fp32", 100.0, 0.02, 1.1),  # fp32: not a bf16 cell, however fast
        cell("pytorch", ["selective-precision"], mixed, 20.0, 0.15, 20.0),
        cell("pytorch", ["cuda-graphs", "selective-precision"], mixed, 60.0, 0.05, 1.4),
        cell("transformers-reference", [], "fp32", 5.0, None, 40.0),
    ]}
    rows = {row["target"]: row for row in gpu_check.targets(document)}
    assert {row["cell"] for row in rows.values()} == {"csm-1b/pytorch/cuda-graphs+selective-precision"}
    assert rows["x_floor"]["met"] is True and rows["x_floor"]["value"] == 1.4
    assert rows["time_to_first_audio_s"]["met"] is True
    assert rows["vs_reference"]["value"] == 12.0 and rows["vs_reference"]["met"] is True


def test_targets_without_a_bf16_cell_say_so():
    rows = gpu_check.targets({"cells": [cell("pytorch", [], "fp32", 10.0, 0.2, 9.0)]})
    assert all(row["met"] is None and row["note"] == "no pytorch bf16 cell ran" for row in rows)


def test_test_counts_come_from_a_real_junit_file(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert 1 == 2\n"
        "@pytest.mark.skip(reason='no device here')\ndef test_skip():\n    pass\n"
    )
    junit = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_sample.py"),
                    f"--junitxml={junit}"], capture_output=True, timeout=120, cwd=tmp_path)
    counts = gpu_check.test_counts(junit)
    assert (counts["tests"], counts["passed"], counts["failures"], counts["skipped"]) == (3, 1, 1, 1)
    kinds = {p["test"].split("::")[-1]: (p["kind"], p["message"]) for p in counts["problems"]}
    assert kinds["test_bad"][0] == "failure" and kinds["test_skip"] == ("skipped", "no device here")
