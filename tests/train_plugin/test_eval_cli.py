"""``csmctl eval`` end to end, as real subprocesses, on the ``tiny`` preset (random weights: the transcripts
are garbage, the metrics around them are what is checked) and espeak-ng clips as voice and reference."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from conftest import csmctl, write_jsonl
from csm_train.evaluation import PROSODY_FIELDS, error_rates

pytest.importorskip("torch")
pytest.importorskip("jiwer")

ESPEAK = shutil.which("espeak-ng")

PER_PROMPT = {
    "speed": ["real_time_factor", "time_to_first_audio_s", "frames_per_second", "generation_seconds", "audio_seconds"],
    "intelligibility": ["wer", "cer"],
    "voice": ["speaker_similarity"],
    "emotion": ["requested", "requested_arousal", "heard", "heard_arousal"],
    "length": ["frames", "max_frames", "ended_before_limit"],
}
OVERALL = {
    "speed": ["real_time_factor", "time_to_first_audio_s", "frames_per_second"],
    "intelligibility": ["wer", "cer"],
    "voice": ["speaker_similarity"],
    "prosody": [f"mean_abs_delta_{name}" for name in PROSODY_FIELDS],
    "emotion": ["arousal_order_agreement", "arousal_pairs", "label_match_rate"],
    "length": ["mean_frames", "total_frames", "ended_before_limit_rate"],
}


def check_fields(group: dict, names: list, where: str) -> None:
    """Each field is a finite number, a bool or a label, or None with a non-empty reason in ``skipped``."""
    for name in names:
        assert name in group, f"{where}: {name} missing"
        value = group[name]
        if value is None:
            assert group["skipped"].get(name), f"{where}: {name} is None without a reason"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            assert math.isfinite(value), f"{where}: {name} = {value}"
        else:
            assert isinstance(value, (bool, str)), f"{where}: {name} = {value!r}"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("prompts")
    subprocess.run([ESPEAK, "-v", "en+f3", "-p", "70", "-w", str(folder / "voice.wav"), "This is my voice."], check=True)
    subprocess.run([ESPEAK, "-v", "en", "-w", str(folder / "ref.wav"), "Good morning."], check=True)
    write_jsonl(folder / "prompts.jsonl", [
        {"text": "Good morning.", "voice": "voice.wav", "voice_text": "This is my voice.", "emotion": "calm",
         "reference": "ref.wav"},
        {"text": "What a day!", "emotion": "excited"},
    ])
    return folder


pytestmark = [pytest.mark.slow, pytest.mark.espeak]


def test_eval_reports_every_metric(prompts, cache, tmp_path):
    out = tmp_path / "report"
    result = csmctl(prompts, cache, "eval", "prompts.jsonl", "--preset", "tiny", "-m", "6", "--seed", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in result.stdout and "2/2" in result.stderr  # the progress bar over the prompts
    document = json.loads((out / "eval.json").read_text())
    assert document["comparison"] is None and len(document["runs"]) == 1
    run = document["runs"][0]
    assert run["settings"]["preset"] == "tiny" and run["settings"]["max_new_frames"] == 6
    assert [r["line"] for r in run["prompts"]] == [1, 2]
    for r in run["prompts"]:
        for group, names in PER_PROMPT.items():
            check_fields(r[group], names, f"line {r['line']} {group}")
        check_fields(r["prosody"]["generated"], list(PROSODY_FIELDS), f"line {r['line']} prosody")
        # the WER and CER are of the transcriber stage's transcript against the prompt's text
        assert {k: r["intelligibility"][k] for k in ("wer", "cer")} == pytest.approx(error_rates(r["text"], r["transcript"]))
        assert 0 < r["length"]["frames"] <= 6
        assert r["length"]["ended_before_limit"] == (r["length"]["frames"] < 6)
    first, second = run["prompts"]
    check_fields(first["prosody"]["delta"], list(PROSODY_FIELDS), "line 1 prosody delta")
    assert first["prosody"]["reference"]["f0_median_hz"] > 0  # the espeak-ng reference is voiced
    assert second["prosody"]["delta"] is None and second["prosody"]["skipped"]["delta"]
    assert second["voice"]["skipped"]["speaker_similarity"] == "the prompt has no 'voice' clip"
    assert first["emotion"]["requested_arousal"] < second["emotion"]["requested_arousal"]  # calm < excited
    for group, names in OVERALL.items():
        check_fields(run["overall"][group], names, f"overall {group}")
    assert run["overall"]["emotion"]["arousal_pairs"] == 1
    assert run["overall"]["length"]["total_frames"] == sum(r["length"]["frames"] for r in run["prompts"])
    markdown = (out / "eval.md").read_text()
    assert "## preset tiny" in markdown and "| intelligibility.wer |" in markdown
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))


def test_compare_optimizer_on_and_off(prompts, cache, tmp_path):
    out = tmp_path / "compare"
    result = csmctl(prompts, cache, "eval", "prompts.jsonl", "--preset", "tiny", "-m", "6", "--seed", "0",
                    "--compare", "optimizers:amortized-analysis", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "eval.json").read_text())
    a, b = document["runs"]
    assert a["settings"]["optimizers"] == [] and b["settings"]["optimizers"] == ["amortized-analysis"]
    rows = {row["metric"]: row for row in document["comparison"]}
    assert set(rows) == {f"{g}.{n}" for g, names in OVERALL.items() for n in names}
    for row in rows.values():
        group, name = row["metric"].split(".")
        assert row["a"] == a["overall"][group][name] and row["b"] == b["overall"][group][name]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (row["a"], row["b"]))
        assert row["delta"] == (pytest.approx(row["b"] - row["a"]) if numbers else None)
    markdown = (out / "eval.md").read_text()
    assert "## Comparison" in markdown and f"| preset tiny | {b['label']} | delta (b − a) |" in markdown


def test_compare_two_presets_labels_both_runs(prompts, cache, tmp_path):
    write_jsonl(prompts / "one.jsonl", [{"text": "Hi."}])
    out = tmp_path / "presets"
    result = csmctl(prompts, cache, "eval", "one.jsonl", "--preset", "tiny", "-m", "3", "--compare", "preset:tiny",
                    "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "eval.json").read_text())
    labels = [run["label"] for run in document["runs"]]
    assert labels[0] == "preset tiny" and labels[1] != labels[0] and document["comparison"]


@pytest.mark.parametrize("lines, args, message", [
    (None, [], "PROMPTS 'missing.jsonl' does not exist"),
    (['{"text": "ok"}', '{"text": "x", oops}'], [], "bad.jsonl line 2: not valid JSON"),
    (['{"text": "ok"}', '{"text": ""}'], [], "bad.jsonl line 2: field 'text' is empty"),
    (['{"text": "ok"}'], ["--compare", "optimizers:no-such-optimizer"], "unknown optimizer 'no-such-optimizer'"),
    (['{"text": "ok"}'], ["--compare", "no/such/folder"], "--compare 'no/such/folder' is not a checkpoint folder"),
])
def test_bad_input_is_one_error_line(prompts, cache, tmp_path, lines, args, message):
    name = "missing.jsonl" if lines is None else "bad.jsonl"
    if lines is not None:
        write_jsonl(prompts / name, lines)
    out = tmp_path / "never"
    result = csmctl(prompts, cache, "eval", name, "--preset", "tiny", "--out", str(out), *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not out.exists()


def test_compare_a_checkpoint_folder_with_the_preset_it_was_saved_from(prompts, cache, tmp_path):
    """A checkpoint on disk needs a Whisper for its transcriber stage: the tiny one, through models.asr."""
    from csm_listen.tiny_models import write_tiny_whisper
    from csm_model.presets import save_preset

    checkpoint = save_preset("tiny", tmp_path / "csm", layout="transformers", seed=0)
    whisper = write_tiny_whisper(tmp_path / "whisper", seed=0)
    (tmp_path / "asr.toml").write_text(f'[models]\nasr = "{whisper}"\n')
    write_jsonl(prompts / "one.jsonl", [{"text": "Hi there."}])
    out = tmp_path / "checkpoint"
    result = csmctl(prompts, cache, "eval", "one.jsonl", "-w", str(checkpoint), "-c", str(tmp_path / "asr.toml"),
                    "-m", "3", "--seed", "0", "--compare", "preset:tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "eval.json").read_text())
    a, b = document["runs"]
    assert a["label"] == "checkpoint csm" and a["settings"]["model_path"] == str(checkpoint)
    assert b["label"] == "preset tiny" and b["settings"]["preset"] == "tiny" and b["settings"]["model_path"] is None
    # the same weights, the same frame limit: the same length
    assert a["prompts"][0]["length"]["frames"] == b["prompts"][0]["length"]["frames"]
    rows = {row["metric"]: row for row in document["comparison"]}
    assert rows["length.total_frames"]["delta"] == 0
