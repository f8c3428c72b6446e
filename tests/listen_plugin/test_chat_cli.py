"""``csmctl chat``: a conversation kept across invocations in a state file (real subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

CSMCTL = shutil.which("csmctl") or str(Path(sys.executable).parent / "csmctl")


def chat(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "NO_COLOR": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(
        [CSMCTL, "chat", "--state", str(tmp_path / "chat.json"), "--preset", "tiny", "-m", "3",
         "--temperature", "0", "--device", "cpu", *args],
        capture_output=True, text=True, env=environ, timeout=600,
    )


@pytest.mark.slow
def test_each_chat_turn_adds_to_the_state_and_the_next_context(tmp_path):
    first = chat(tmp_path, "--text", "Hello there.", "-o", str(tmp_path / "r1.wav"))
    assert first.returncode == 0, first.stderr
    assert "started" in first.stdout and "turn 1" in first.stdout
    state = json.loads((tmp_path / "chat.json").read_text())
    assert state["turns"] == 1 and [s["text"] for s in state["segments"]][0] == "Hello there."
    assert len(state["segments"]) == 2 and state["segments"][1]["codes"] is not None

    second = chat(tmp_path, "--text", "And again.", "-o", str(tmp_path / "r2.wav"), "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["transcript"] == "And again."
    state = json.loads((tmp_path / "chat.json").read_text())
    assert state["turns"] == 2 and len(state["segments"]) == 4
    assert [s["text"] for s in state["segments"]][:2] == ["Hello there.", state["segments"][1]["text"]]
    assert soundfile.info(str(tmp_path / "r2.wav")).samplerate == 24000


def test_chat_needs_exactly_one_input(tmp_path):
    result = chat(tmp_path, "-o", str(tmp_path / "r.wav"))
    assert result.returncode == 2 and "one of the two" in result.stderr
    assert not (tmp_path / "chat.json").exists()


def test_chat_with_a_foreign_state_file_leaves_it_alone(tmp_path):
    (tmp_path / "chat.json").write_text('{"something": "else"}')
    result = chat(tmp_path, "--text", "hi", "-o", str(tmp_path / "r.wav"))
    assert result.returncode == 2 and "not a csm-multi conversation file" in result.stderr
    assert (tmp_path / "chat.json").read_text() == '{"something": "else"}'
