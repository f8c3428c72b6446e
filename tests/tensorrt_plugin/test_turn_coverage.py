"""Every stage of a default turn that runs on a backend has its engines on ``tensorrt`` (``csm``, ``codec``,
``causal_lm``, ``speech_to_text``): ``csmctl doctor --backend tensorrt`` places them all there, and where
TensorRT is not installed ``csmctl run --backend tensorrt`` stops before loading anything with one message
saying so and what to install, never that a stage is unsupported."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from csm_core.pipeline import AUDIO_STAGES

ENGINE_STAGES = {"tokenizer": ("codec",), "transcriber": ("speech_to_text",), "llm": ("causal_lm",),
                 "tts": ("csm", "codec")}


def csmctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "csm_core.cli", *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, **(env or {})})


def test_the_backend_registers_every_engine_kind_of_a_turn():
    from csm_core.plugins import Plugins
    from csm_core.registry import Registry
    import csm_tensorrt.plugin as trt_plugin

    plugins = Plugins()
    plugins.register(trt_plugin, name="tensorrt")
    backend = Registry.collect(plugins).backend("tensorrt")
    assert all(backend.supports(kind) for kinds in ENGINE_STAGES.values() for kind in kinds)


@pytest.mark.slow  # a fresh interpreter loads every plugin: ~5-12 s on 2 busy cores
def test_doctor_places_every_engine_stage_of_a_turn_on_tensorrt():
    result = csmctl("doctor", "--backend", "tensorrt", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["stage"]: row for row in json.loads(result.stdout)["stages"]}
    assert set(rows) == set(AUDIO_STAGES)
    for stage, kinds in ENGINE_STAGES.items():
        row = rows[stage]
        assert row["backend"] == "tensorrt" and set(row["components"]) <= {"csm", "codec", "causal_lm", "speech_to_text"}
        assert set(kinds) <= set(row["components"]), row
        assert row["status"] in ("runs", "backend unavailable"), row  # never "missing engines"
        if row["status"] == "backend unavailable":
            assert row["reason"].startswith("the tensorrt backend cannot run here"), row
    assert rows["sentiment"]["status"] == "own runtime"


@pytest.mark.slow  # a fresh interpreter loads every plugin: ~5-12 s on 2 busy cores
def test_run_without_tensorrt_stops_before_loading_with_one_message(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the not-installed message cannot be checked")
    out = tmp_path / "reply.wav"
    result = csmctl("run", "--text", "How are you?", "-o", str(out), "--backend", "tensorrt", "--preset", "tiny",
                    env={"CSM_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the tensorrt backend cannot run here"), result.stderr
    assert "the tensorrt package is not installed: pip install 'csm-multi[tensorrt]'" in lines[0]
    assert "does not provide" not in lines[0] and "unsupported" not in lines[0]
    assert not out.exists()
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.rglob("*"))  # nothing exported, written or loaded
