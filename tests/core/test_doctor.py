"""`csmctl doctor`'s runtime checks against installed distributions, with fake ones written to a
throwaway site folder (a ``*.dist-info`` folder with a METADATA file is all importlib.metadata reads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csm_core.doctor import installed_versions, onnxruntime_clash, runtime_checks


def fake_site(root: Path, **distributions: str) -> Path:
    """A site folder holding ``name==version`` distributions (metadata only, no code)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, version in distributions.items():
        name = name.replace("_", "-")
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def by_name(checks) -> dict:
    return {check.name: check for check in checks}


def test_both_onnxruntime_distributions_are_a_clash_that_says_what_to_uninstall(tmp_path):
    site = fake_site(tmp_path / "site", onnxruntime="1.19.2", onnxruntime_gpu="1.20.1")
    assert installed_versions(["onnxruntime", "onnxruntime-gpu", "torch"], [str(site)]) == {
        "onnxruntime": "1.19.2", "onnxruntime-gpu": "1.20.1", "torch": None}
    checks = by_name(runtime_checks([str(site)]))
    clash = checks["onnxruntime packages"]
    assert not clash.ok
    assert "onnxruntime 1.19.2" in clash.detail and "onnxruntime-gpu 1.20.1" in clash.detail
    assert "pip uninstall -y onnxruntime-gpu onnxruntime" in clash.detail
    assert clash.detail.endswith("pip install onnxruntime-gpu")
    assert checks["onnxruntime"].ok and checks["onnxruntime"].detail == "onnxruntime-gpu 1.20.1, onnxruntime 1.19.2"
    assert not checks["torch"].ok and checks["cuda"].detail == "torch is not installed"


@pytest.mark.parametrize("only", ["onnxruntime", "onnxruntime_gpu"])
def test_one_onnxruntime_distribution_is_no_clash(tmp_path, only):
    site = fake_site(tmp_path / "site", **{only: "1.20.1"})
    checks = by_name(runtime_checks([str(site)]))
    assert "onnxruntime packages" not in checks
    assert checks["onnxruntime"].ok and checks["onnxruntime"].detail == f"{only.replace('_', '-')} 1.20.1"


def test_no_onnxruntime_is_reported_not_installed(tmp_path):
    checks = by_name(runtime_checks([str(fake_site(tmp_path / "site", torch="2.5.0"))]))
    assert not checks["onnxruntime"].ok and checks["onnxruntime"].detail == "not installed"
    assert checks["torch"].ok and checks["torch"].detail == "2.5.0"


def test_clash_of_cpu_only_flavours_keeps_the_first_listed():
    clash = onnxruntime_clash({"onnxruntime": "1.20.0", "onnxruntime-directml": "1.20.0"})
    assert clash is not None and "pip uninstall -y onnxruntime onnxruntime-directml" in clash.detail
    assert onnxruntime_clash({"onnxruntime": "1.20.0", "onnxruntime-gpu": None}) is None


@pytest.mark.slow  # a fresh interpreter loads every plugin and torch: ~5-12 s on 2 busy cores
def test_csmctl_doctor_reports_the_clash_from_the_environment(tmp_path):
    """End to end: the CLI in a fresh interpreter whose path starts with the fake site folder."""
    site = fake_site(tmp_path / "site", onnxruntime="1.19.2", onnxruntime_gpu="1.20.1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "csm_core.cli", "doctor", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    clash = checks["onnxruntime packages"]
    assert clash["ok"] is False and "pip uninstall -y onnxruntime-gpu onnxruntime" in clash["detail"]
    assert "onnxruntime 1.19.2" in clash["detail"] and "onnxruntime-gpu 1.20.1" in clash["detail"]
