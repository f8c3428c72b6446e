"""Data preparation: manifests (JSONL, CSV, folder), bad rows with their line numbers, pre-tokenization
through the pipeline's real ``tokenizer`` stage (tiny Mimi) and its cache, samples and the split."""

from __future__ import annotations

import json
import math

import pytest
import soundfile

torch = pytest.importorskip("torch")

from csm_core.config import load_settings  # noqa: E402
from csm_core.pipeline import Pipeline  # noqa: E402
from csm_model.text_tokenizer import ByteTextTokenizer  # noqa: E402
from csm_train.dataset import prepare_data  # noqa: E402
from csm_train.manifest import DataError, read_rows  # noqa: E402
from csm_train.order import SampleOrder  # noqa: E402
from csm_train.pretokenize import INDEX_FILE, Tokenizers  # noqa: E402
from csm_train.samples import Utterance, build_samples, split_samples  # noqa: E402

from conftest import manifest_rows, stereo_44k, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def tokenizers():
    """Mimi (tiny preset) as the pipeline's tokenizer stage, the byte tokenizer, the tiny model's limits."""
    with Pipeline(load_settings(None, {"models.preset": "tiny", "device": "cpu"}, environ={})) as pipeline:
        stage = pipeline.stage("tokenizer")
        yield Tokenizers(stage.encode, stage.sample_rate, ByteTextTokenizer().encode, 32, 512)


def bad_manifest(folder):
    """Good rows 1, 2 and 9; bad rows 3..8, each bad in another way. Returns (path, {line: needle})."""
    rows = manifest_rows()
    (folder / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio at all")
    lines = [
        rows[0],
        rows[1],
        {"audio": "missing.wav", "text": "Gone."},
        {"audio": "turn2.wav", "text": "   "},
        {"audio": "garbage.wav", "text": "Noise."},
        '{"audio": "turn3.wav", "text": "broken',
        {"audio": "turn4.wav", "text": "Late.", "start": 50.0},
        {"audio": "turn5.wav", "text": "Far too long. " * 40},
        rows[6],
    ]
    needles = {
        3: "missing.wav' does not exist", 4: "empty text", 5: "unusable audio", 6: "not valid JSON",
        7: "outside the recording", 8: "clip too long for the context",
    }
    return write_jsonl(folder / "bad.jsonl", lines), needles


def test_bad_rows_are_reported_with_their_line(speech, tokenizers, tmp_path):
    path, needles = bad_manifest(speech)
    small = Tokenizers(tokenizers.encode_audio, tokenizers.sample_rate, tokenizers.encode_text, 32, 300)
    data = prepare_data(path, tmp_path / "cache", small, eval_fraction=0.0, seed=0, progress=False)
    report = data.report
    assert (report.rows, report.used) == (9, 3)
    assert [p.where for p in report.skipped] == [f"bad.jsonl line {n}" for n in sorted(needles)]
    for problem, (line, needle) in zip(report.skipped, sorted(needles.items())):
        assert needle in problem.reason, (line, problem)
    assert [u.where for u in data.utterances] == ["bad.jsonl line 1", "bad.jsonl line 2", "bad.jsonl line 9"]
    with pytest.raises(DataError, match=r"bad\.jsonl line 3: audio file .*missing\.wav' does not exist.*--strict"):
        prepare_data(path, tmp_path / "cache", small, eval_fraction=0.0, seed=0, progress=False, strict=True)
    with pytest.raises(DataError, match=r"late\.jsonl line 2: unusable audio: start 50\.0"):
        rows = [json.loads(line) for i, line in enumerate(path.read_text().splitlines()) if i in (0, 6)]
        prepare_data(write_jsonl(speech / "late.jsonl", rows), tmp_path / "cache", small, eval_fraction=0.0,
                     seed=0, progress=False, strict=True)


def test_csv_and_folder_give_the_same_rows(speech, tmp_path):
    lines = ["audio,text,speaker,conversation"] + [
        f'{r["audio"]},"{r["text"]}",{r["speaker"]},{r["conversation"]}' for r in manifest_rows()
    ] + ["turn0.wav,,0,c9", "turn1.wav,Hi,-2,c9"]
    (speech / "data.csv").write_text("\n".join(lines) + "\n")
    found = read_rows(speech / "data.csv")
    assert [(r.text, r.speaker, r.conversation) for r in found.rows] == [
        (r["text"], r["speaker"], r["conversation"]) for r in manifest_rows()
    ]
    assert [(p.where, p.reason.split(" (")[0]) for p in found.problems] == [
        ("data.csv line 10", "empty text"), ("data.csv line 11", "speaker '-2' is not an integer id >= 0"),
    ]
    folder = tmp_path / "recordings"
    folder.mkdir()
    for index, row in enumerate(manifest_rows()[:3]):
        (folder / f"{index}.wav").write_bytes((speech / row["audio"]).read_bytes())
        if index != 1:
            (folder / f"{index}.txt").write_text(row["text"] + "\n")
    found = read_rows(folder)
    assert [(r.where, r.text) for r in found.rows] == [("0.wav", manifest_rows()[0]["text"]), ("2.wav", manifest_rows()[2]["text"])]
    assert [str(p) for p in found.problems] == ["1.wav: no transcript 1.txt beside it"]


def test_unknown_fields_are_reported_not_silently_ignored(speech):
    path = write_jsonl(speech / "extra.jsonl", [{**manifest_rows()[0], "emotion": "happy"}])
    found = read_rows(path)
    assert len(found.rows) == 1
    assert found.notes == ["extra.jsonl: field 'emotion' (first at extra.jsonl line 1) is not one of audio, text, speaker, conversation, start, end; ignored"]


def test_pretokenization_is_reused_and_keyed_by_content(speech, tokenizers, tmp_path):
    rows = manifest_rows()[:3] + [{"audio": "turn3.flac", "text": "Shall we go for a walk?", "speaker": 1, "conversation": "c1"}]
    stereo_44k(speech / "turn3.wav", speech / "turn3.flac")
    path = write_jsonl(tmp_path / "data.jsonl", [{**r, "audio": str(speech / r["audio"])} for r in rows])
    cache = tmp_path / "cache"
    first = prepare_data(path, cache, tokenizers, eval_fraction=0.0, seed=0, progress=False)
    assert (first.report.encoded, first.report.reused) == (4, 0)
    codes = [u.codes for u in first.utterances]
    assert all(c.shape[0] == 32 and c.dtype == torch.long for c in codes)
    # the FLAC (44.1 kHz stereo) holds the speech of the WAV it was made from: its frames are that length
    seconds = soundfile.info(str(speech / "turn3.wav")).duration
    assert abs(codes[3].shape[1] - math.ceil(seconds * 12.5)) <= 1
    again = prepare_data(path, cache, tokenizers, eval_fraction=0.0, seed=0, progress=False)
    assert (again.report.encoded, again.report.reused) == (0, 4)
    assert all(torch.equal(a, b) for a, b in zip(codes, (u.codes for u in again.utterances)))
    assert json.loads((cache / INDEX_FILE).read_text())["version"] == 1
    # Changed text (a new key) is encoded again; the others are reused.
    rows[1] = {**rows[1], "text": "I am very fine."}
    path = write_jsonl(tmp_path / "data.jsonl", [{**r, "audio": str(speech / r["audio"])} for r in rows])
    changed = prepare_data(path, cache, tokenizers, eval_fraction=0.0, seed=0, progress=False)
    assert (changed.report.encoded, changed.report.reused) == (1, 3)


def utterance(conversation, frames, text_tokens=10) -> Utterance:
    return Utterance("k", "w", conversation, torch.zeros(text_tokens, dtype=torch.long), torch.zeros(32, frames, dtype=torch.long))


def test_context_is_the_most_recent_turns_that_fit():
    utts = [utterance("a", 20), utterance("a", 30), utterance(None, 5), utterance("a", 40), utterance("a", 10)]
    # positions: 31, 41, 16, 51, 21
    samples = build_samples(utts, max_positions=100)
    assert [(s.target, s.context, s.length) for s in samples] == [
        (0, (), 31), (1, (0,), 72), (2, (), 16), (3, (1,), 92), (4, (3,), 72),
    ]
    samples = build_samples(utts, max_positions=2048)
    assert samples[4].context == (0, 1, 3) and samples[4].length == 31 + 41 + 51 + 21


def test_split_holds_out_whole_conversations():
    utts = [utterance(f"c{i // 3}", 5) for i in range(12)] + [utterance(None, 5)]
    train, evaluation = split_samples(build_samples(utts, 512), utts, 0.25, seed=1)
    held = {utts[s.target].conversation for s in evaluation}
    assert len(held) == 1 and not held & {utts[s.target].conversation for s in train}
    assert len(train) + len(evaluation) == 13
    assert split_samples(build_samples(utts[:3], 512), utts[:3], 0.5, seed=1)[1] == []  # one conversation: no split


def test_sample_order_resumes_where_it_stopped():
    straight = SampleOrder(5, seed=3)
    first = straight.take(7) + straight.take(6)
    resumed = SampleOrder(5, seed=3, position=7)
    assert resumed.take(6) == first[7:]
    assert sorted(i for _, i in first[:5]) == list(range(5)) and sorted(i for _, i in first[5:10]) == list(range(5))
