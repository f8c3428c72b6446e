"""`csmctl doctor`'s runtime checks against installed distributions, with fake ones written to a
throwaway site folder (a ``*.dist-info`` folder with a METADATA file is all importlib.metadata reads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csm_core.doctor import (
    backend_checks,
    cuda_device_count,
    installed_versions,
    onnxruntime_clash,
    onnxruntime_cuda_check,
    runtime_checks,
)


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


def test_a_backends_device_check_keeps_a_device_it_cannot_use_out_of_devices_here():
    """On a GPU machine whose runtime build has no CUDA (plain onnxruntime), cuda is named with the reason."""
    from csm_core import hookimpl
    from csm_core.plugins import Plugins
    from csm_core.records import Backend
    from csm_core.registry import Registry

    class CpuOnlyBuild:
        @hookimpl
        def register_backends(self, register):
            register(Backend(name="cpu-build", engines={"csm": lambda m, c: None}, check=lambda: None,
                             devices=("cpu", "cuda"),
                             device_check=lambda d: None if d == "cpu" else "this build has no CUDA provider"))

    plugins = Plugins()
    plugins.register(CpuOnlyBuild(), name="cpu-build")
    registry = Registry.collect(plugins, strict=False)
    [check] = backend_checks(registry, lambda: (1, "1 CUDA device"))
    assert check.ok and "devices here: cpu; no cuda: this build has no CUDA provider" in check.detail


def test_the_onnxruntime_backend_checks_its_build_for_each_device():
    pytest.importorskip("onnxruntime")
    from csm_onnxruntime.plugin import device_check
    import onnxruntime

    assert device_check("cpu") is None
    expected = None if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "has no CUDAExecutionProvider"
    result = device_check("cuda")
    assert result is None if expected is None else expected in result


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


# ------------------------------------------------------------------------------------- CUDA here
def test_cuda_device_count_asks_the_driver():
    count, found = cuda_device_count()
    assert isinstance(count, int) and count >= 0 and found
    if count == 0:  # no driver, or a driver without devices: the reason says which
        assert "no NVIDIA driver" in found or "no CUDA device" in found or "error" in found
    else:
        assert found.startswith(f"{count} CUDA device")


def test_onnxruntime_cuda_needs_the_provider_and_a_device():
    ort = pytest.importorskip("onnxruntime")
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


def test_backend_devices_here_leave_out_cuda_without_a_device():
    from csm_core.plugins import Plugins
    from csm_core.registry import Registry

    registry = Registry.collect(Plugins.from_environment(), strict=False)
    with_cuda = [n for n, r in registry.backends.items() if "cuda" in r.record.devices]
    if not with_cuda:
        pytest.skip("no registered backend declares cuda")
    none = by_name(backend_checks(registry, lambda: (0, "the NVIDIA driver sees no CUDA device")))
    one = by_name(backend_checks(registry, lambda: (1, "1 CUDA device")))
    for name in with_cuda:
        if not none[f"backend {name}"].ok:
            continue  # not usable here at all (e.g. tensorrt not installed): no device list
        assert "devices here: cpu; no cuda: the NVIDIA driver sees no CUDA device" in none[f"backend {name}"].detail
        assert "devices here: cpu, cuda)" in one[f"backend {name}"].detail


@pytest.mark.slow  # a fresh interpreter loads every plugin and torch: ~5-12 s on 2 busy cores
@pytest.mark.skipif(cuda_device_count()[0] > 0, reason="this machine has a CUDA device")
def test_csmctl_doctor_claims_no_cuda_on_a_machine_without_a_gpu():
    """The issue's machine: onnxruntime-gpu installed, no GPU. Nothing may say cuda works here."""
    done = subprocess.run([sys.executable, "-m", "csm_core.cli", "doctor", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    if "onnxruntime cuda" in checks:
        assert checks["onnxruntime cuda"]["ok"] is False
    assert checks["cuda"]["ok"] is False
    for name, check in checks.items():
        if name.startswith("backend ") and check["ok"]:
            devices = check["detail"].split("devices here: ")[1]
            assert "cuda" not in devices.split(";")[0], check["detail"]
