"""`csmctl doctor`'s generic checks: runtimes against installed distributions (fake ones in a
throwaway site folder, :func:`fake_site.fake_site`), CUDA, and the checks each backend contributes.
The ONNX Runtime checks are tested with that plugin (tests/onnxruntime_plugin/test_onnxruntime_doctor.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from csm_core import hookimpl
from csm_core.doctor import (
    Check,
    backend_checks,
    cuda_device_count,
    installed_versions,
    runtime_checks,
    usable_backends,
)
from csm_core.plugins import Plugins
from csm_core.records import Backend
from csm_core.registry import Registry
from fake_site import fake_site


def by_name(checks) -> dict:
    return {check.name: check for check in checks}


def registry_of(*backends: Backend) -> Registry:
    class Plugin:
        @hookimpl
        def register_backends(self, register):
            for backend in backends:
                register(backend)

    plugins = Plugins()
    plugins.register(Plugin(), name="under-test")
    return Registry.collect(plugins, strict=False)


def test_runtimes_are_read_from_the_installed_distributions(tmp_path):
    site = fake_site(tmp_path / "site", torch="2.5.0", onnxruntime="1.19.2")
    assert installed_versions(["onnxruntime", "torch", "transformers"], [str(site)]) == {
        "onnxruntime": "1.19.2", "torch": "2.5.0", "transformers": None}
    checks = runtime_checks([str(site)])
    assert [check.name for check in checks] == ["torch", "transformers", "cuda"]
    checks = by_name(checks)
    assert checks["torch"].ok and checks["torch"].detail == "2.5.0"
    assert not checks["transformers"].ok and checks["transformers"].detail == "not installed"


def test_without_torch_cuda_is_not_asked():
    checks = by_name(runtime_checks([]))
    assert not checks["torch"].ok and checks["cuda"] == Check("cuda", False, "torch is not installed")


def test_a_backend_tells_doctor_what_it_checks_even_when_it_cannot_run():
    """Each backend's ``doctor_checks`` come before the backends' lines, in backend-name order; one
    that raises is a failed line of its own; a backend without them adds none."""
    from csm_core.errors import BackendUnavailable

    def missing():
        raise BackendUnavailable("the b runtime is not installed")

    def broken():
        raise RuntimeError("no metadata")

    registry = registry_of(
        Backend(name="b", engines={}, check=missing, doctor_checks=lambda: [Check("b-runtime", False, "not installed")]),
        Backend(name="a", engines={}, check=lambda: None,
                doctor_checks=lambda: (Check("a-runtime", True, "1.0"), Check("a cuda", False, "no provider"))),
        Backend(name="c", engines={}, check=lambda: None, doctor_checks=broken),
        Backend(name="d", engines={}, check=lambda: None),
    )
    checks = backend_checks(registry, lambda: (0, "no NVIDIA driver"))
    assert [check.name for check in checks] == [
        "a-runtime", "a cuda", "b-runtime", "c checks", "backend a", "backend b", "backend c", "backend d"]
    assert by_name(checks)["c checks"] == Check("c checks", False, "doctor checks failed: RuntimeError: no metadata")
    assert usable_backends(registry) == ["a", "c", "d"]


def test_a_backends_device_check_keeps_a_device_it_cannot_use_out_of_devices_here():
    """On a GPU machine whose runtime build has no CUDA, cuda is named with the reason."""
    registry = registry_of(
        Backend(name="cpu-build", engines={"csm": lambda m, c: None}, check=lambda: None, devices=("cpu", "cuda"),
                device_check=lambda d: None if d == "cpu" else "this build has no CUDA provider"))
    [check] = backend_checks(registry, lambda: (1, "1 CUDA device"))
    assert check.ok and "devices here: cpu; no cuda: this build has no CUDA provider" in check.detail


# ------------------------------------------------------------------------------------- CUDA here
def test_cuda_device_count_asks_the_driver():
    count, found = cuda_device_count()
    assert isinstance(count, int) and count >= 0 and found
    if count == 0:  # no driver, or a driver without devices: the reason says which
        assert "no NVIDIA driver" in found or "no CUDA device" in found or "error" in found
    else:
        assert found.startswith(f"{count} CUDA device")


def test_backend_devices_here_leave_out_cuda_without_a_device():
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
    """The issue's machine: a runtime built for CUDA installed, no GPU. Nothing may say cuda works here
    (neither ``cuda`` nor a backend's ``<runtime> cuda`` line, nor a backend's devices)."""
    done = subprocess.run([sys.executable, "-m", "csm_core.cli", "doctor", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["cuda"]["ok"] is False
    for name, check in checks.items():
        if name.endswith(" cuda"):
            assert check["ok"] is False, check
    for name, check in checks.items():
        if name.startswith("backend ") and check["ok"]:
            devices = check["detail"].split("devices here: ")[1]
            assert "cuda" not in devices.split(";")[0], check["detail"]
