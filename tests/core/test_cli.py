"""``csmctl`` as users run it: real subprocesses of the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CSMCTL = shutil.which("csmctl") or str(Path(sys.executable).parent / "csmctl")


def csmctl(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [CSMCTL, *args], capture_output=True, text=True, env=environ, cwd=cwd, timeout=300
    )


def test_help_lists_the_commands():
    result = csmctl("--help")
    assert result.returncode == 0
    for command in ("plugins", "doctor", "run", "say"):
        assert command in result.stdout


def test_importing_the_cli_does_not_import_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import csm_core.cli"],
        capture_output=True, text=True, check=True,
    )
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "csm_core" in imported
    assert not imported & {"torch", "onnxruntime", "tensorrt", "transformers", "numpy"}


def test_plugins_json_shows_the_in_tree_plugins():
    result = csmctl("plugins", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plugin = next(p for p in report["plugins"] if p["name"] == "pytorch")
    assert plugin["distribution"] == "csm-multi" and plugin["version"]
    assert report["conflicts"] == []


def test_empty_allowlist_loads_no_plugins():
    result = csmctl("plugins", "--json", env={"CSM_LOAD_PLUGINS": ""})
    assert json.loads(result.stdout)["plugins"] == []
    table = csmctl("plugins", env={"CSM_LOAD_PLUGINS": ""})
    assert "no plugins loaded" in table.stdout


def test_doctor_reports_runtimes_and_cuda():
    result = csmctl("doctor", "--json")
    assert result.returncode == 0, result.stderr
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert {"torch", "onnxruntime", "tensorrt", "cuda"} <= set(checks)
    assert checks["tensorrt"]["ok"] is False


def test_say_without_a_tts_stage_fails_clearly(tmp_path):
    result = csmctl("say", "hello", "-o", str(tmp_path / "out.wav"), env={"CSM_LOAD_PLUGINS": ""})
    assert result.returncode == 2
    assert "unknown tts stage 'csm': choose one of (none registered" in result.stderr
    assert not (tmp_path / "out.wav").exists()


def test_run_needs_input_or_text():
    result = csmctl("run")
    assert result.returncode == 2 and "one of the two" in result.stderr


def test_run_with_a_missing_file():
    result = csmctl("run", "no-such-file.wav")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_bad_flag_value_names_the_field(tmp_path):
    result = csmctl("say", "hi", "--top-p", "2", "-o", str(tmp_path / "o.wav"))
    assert result.returncode == 2
    assert "generation.top_p: Input should be less than or equal to 1" in result.stderr


@pytest.mark.slow
def test_out_of_tree_example_plugin_installs_and_is_discovered(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO / "examples" / "csm-plugin-loudness")],
        check=True, capture_output=True, text=True, timeout=300,
    )
    env = {"PYTHONPATH": str(target)}
    report = json.loads(csmctl("plugins", "--json", env=env).stdout)
    plugin = next(p for p in report["plugins"] if p["name"] == "loudness")
    assert plugin["distribution"] == "csm-plugin-loudness" and plugin["version"] == "0.1.0"
    assert plugin["hooks"] == ["register_sentiment_analyzers", "run_stage"]
    assert plugin["registered"] == ["sentiment:loudness"]
    # the allowlist can pick it alone, by entry-point name
    only = json.loads(csmctl("plugins", "--json", env={**env, "CSM_LOAD_PLUGINS": "loudness"}).stdout)
    assert [p["name"] for p in only["plugins"]] == ["loudness"]


def test_unusable_backend_says_what_is_missing_and_what_is_usable(tmp_path):
    result = csmctl("say", "hi", "--backend", "tensorrt", "--preset", "tiny", "-o", str(tmp_path / "o.wav"))
    assert result.returncode == 2
    assert "the tensorrt package is not installed" in result.stderr
    assert "Backends usable here: onnxruntime, pytorch" in result.stderr


def test_usage_errors_are_one_error_line_and_help_still_works():
    result = csmctl("say", "hi", "--seed", "abc")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: Invalid value for '--seed': Input should be a valid integer, unable to parse string as an integer "
        "(see `csmctl say --help`)"]
    help_text = csmctl("say", "--help")
    assert help_text.returncode == 0 and "--output" in help_text.stdout and not help_text.stderr
