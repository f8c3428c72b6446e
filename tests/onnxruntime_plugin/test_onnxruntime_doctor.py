"""What the onnxruntime backend tells ``csmctl doctor`` (:mod:`csm_onnxruntime.doctor`): the installed
ONNX Runtime distributions (fake ones in a throwaway site folder), their clash, and CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from csm_onnxruntime.doctor import checks, onnxruntime_clash, onnxruntime_cuda_check
from fake_site import fake_site


def by_name(found) -> dict:
    return {check.name: check for check in found}


def test_both_onnxruntime_distributions_are_a_clash_that_says_what_to_uninstall(tmp_path):
    site = fake_site(tmp_path / "site", onnxruntime="1.19.2", onnxruntime_gpu="1.20.1")
    found = by_name(checks([str(site)]))
    clash = found["onnxruntime packages"]
    assert not clash.ok
    assert "onnxruntime 1.19.2" in clash.detail and "onnxruntime-gpu 1.20.1" in clash.detail
    assert "pip uninstall -y onnxruntime-gpu onnxruntime" in clash.detail
    assert clash.detail.endswith("pip install onnxruntime-gpu")
    assert found["onnxruntime"].ok and found["onnxruntime"].detail == "onnxruntime-gpu 1.20.1, onnxruntime 1.19.2"
    assert "onnxruntime cuda" in found


@pytest.mark.parametrize("only", ["onnxruntime", "onnxruntime_gpu"])
def test_one_onnxruntime_distribution_is_no_clash(tmp_path, only):
    found = by_name(checks([str(fake_site(tmp_path / "site", **{only: "1.20.1"}))]))
    assert "onnxruntime packages" not in found
    assert found["onnxruntime"].ok and found["onnxruntime"].detail == f"{only.replace('_', '-')} 1.20.1"


def test_no_onnxruntime_is_reported_not_installed_and_cuda_not_asked(tmp_path):
    found = checks([str(fake_site(tmp_path / "site", torch="2.5.0"))])
    assert [(c.name, c.ok, c.detail) for c in found] == [("onnxruntime", False, "not installed")]


def test_clash_of_cpu_only_flavours_keeps_the_first_listed():
    clash = onnxruntime_clash({"onnxruntime": "1.20.0", "onnxruntime-directml": "1.20.0"})
    assert clash is not None and "pip uninstall -y onnxruntime onnxruntime-directml" in clash.detail
    assert onnxruntime_clash({"onnxruntime": "1.20.0", "onnxruntime-gpu": None}) is None


def test_the_backend_record_carries_the_checks():
    from csm_onnxruntime import plugin

    records = []
    plugin.register_backends(records.append)
    (backend,) = records
    assert [c.name for c in backend.doctor_checks()] == [c.name for c in checks()]


def test_the_onnxruntime_backend_checks_its_build_for_each_device():
    import onnxruntime

    from csm_onnxruntime.plugin import device_check

    assert device_check("cpu") is None
    expected = None if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "has no CUDAExecutionProvider"
    result = device_check("cuda")
    assert result is None if expected is None else expected in result


def test_onnxruntime_cuda_needs_the_provider_and_a_device():
    import onnxruntime as ort

    built_with_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    absent = onnxruntime_cuda_check(lambda: (0, "no NVIDIA driver (libcuda.so.1 not found)"))
    assert absent.name == "onnxruntime cuda" and not absent.ok
    present = onnxruntime_cuda_check(lambda: (1, "1 CUDA device"))
    assert present.ok == built_with_cuda
    if built_with_cuda:  # onnxruntime-gpu lists the provider on any machine: the device decides
        assert "has CUDAExecutionProvider, but no NVIDIA driver" in absent.detail
        assert present.detail == "CUDAExecutionProvider, 1 CUDA device"
    else:
        assert "has no CUDAExecutionProvider" in absent.detail and "pip install onnxruntime-gpu" in absent.detail


@pytest.mark.slow  # a fresh interpreter loads every plugin and torch: ~5-12 s on 2 busy cores
def test_csmctl_doctor_reports_the_clash_from_the_environment(tmp_path):
    """End to end: the CLI in a fresh interpreter whose path starts with the fake site folder."""
    site = fake_site(tmp_path / "site", onnxruntime="1.19.2", onnxruntime_gpu="1.20.1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "csm_core.cli", "doctor", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = {c["name"]: c for c in json.loads(done.stdout)}
    clash = found["onnxruntime packages"]
    assert clash["ok"] is False and "pip uninstall -y onnxruntime-gpu onnxruntime" in clash["detail"]
    assert "onnxruntime 1.19.2" in clash["detail"] and "onnxruntime-gpu 1.20.1" in clash["detail"]
