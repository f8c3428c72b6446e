"""From ``DATA`` to training and eval samples, with a report of every row that was skipped.

Steps: read the manifest or folder (:mod:`csm_train.manifest`), pre-tokenize the usable rows
(:mod:`csm_train.pretokenize`), build one sample per utterance with its conversation's earlier turns
as context (:mod:`csm_train.samples`) and hold out whole conversations for the eval loss. Under
``strict`` the first bad row stops everything with :class:`~csm_train.manifest.DataError`; otherwise
bad rows are skipped and listed, each with its line, in :class:`DataReport` (the command prints them
and writes ``OUTPUT_DIR/data_report.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from csm_core.files import write_atomic

from .manifest import DataError, Problem, read_rows
from .pretokenize import Tokenizers, pretokenize
from .samples import Sample, Utterance, build_samples, split_samples

__all__ = ["DataReport", "TrainingData", "prepare_data"]


@dataclass
class DataReport:
    """What became of the data: rows read, used, ``skipped`` (each with where and why), clips encoded
    in this run and reused from the cache, and ``notes`` (ignored fields, no eval split, ...)."""

    source: str
    rows: int = 0
    used: int = 0
    encoded: int = 0
    reused: int = 0
    skipped: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source, "rows": self.rows, "used": self.used, "encoded": self.encoded,
            "reused": self.reused, "skipped": [{"where": p.where, "reason": p.reason} for p in self.skipped],
            "notes": self.notes,
        }

    def write(self, path: Path) -> Path:
        return write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class TrainingData:
    utterances: list[Utterance]
    train: list[Sample]
    eval: list[Sample]
    report: DataReport


def prepare_data(
    data: Path,
    cache_dir: Path,
    tokenizers: Tokenizers,
    *,
    eval_fraction: float,
    seed: int,
    strict: bool = False,
    shard_size: int = 256,
    progress: bool = True,
) -> TrainingData:
    """Read, check, pre-tokenize and split ``data``. Raises :class:`DataError` when nothing is usable,
    or at the first bad row under ``strict``."""
    found = read_rows(data)
    report = DataReport(str(data), rows=len(found.rows) + len(found.problems), notes=list(found.notes))
    if strict and found.problems:
        first = found.problems[0]
        raise DataError(f"{first} (--strict stops at the first bad row; without it the row is skipped and reported)")
    report.skipped.extend(found.problems)
    utterances, problems, encoded = pretokenize(
        found.rows, cache_dir, tokenizers, shard_size=shard_size, progress=progress, strict=strict
    )
    report.skipped.extend(problems)
    report.skipped.sort(key=_row_order)
    report.used, report.encoded = len(utterances), encoded
    report.reused = len(utterances) - encoded
    if not utterances:
        raise DataError(
            f"no usable training rows in {data}: {report.rows} rows, all skipped"
            + (f" (first: {report.skipped[0]})" if report.skipped else "")
        )
    samples = build_samples(utterances, tokenizers.max_positions)
    train, evaluation = split_samples(samples, utterances, eval_fraction, seed)
    if eval_fraction > 0 and not evaluation:
        report.notes.append(
            "no held-out split: the data has a single conversation (or a single clip), so no eval loss is computed"
        )
    return TrainingData(utterances, train, evaluation, report)


def _row_order(problem: Problem) -> tuple:
    where = problem.where
    head, _, number = where.rpartition(" line ")
    return (head, int(number)) if number.isdigit() else (where, 0)
