"""``OUTPUT_DIR/metrics.jsonl``: one JSON object per logged step (every ``log_every`` steps, the first
step of a run or of a resumed run, the last, and every step with an eval loss).

Each object has ``step``, ``loss`` (the step's loss over all its samples: backbone mean + depth-decoder
mean), ``backbone_loss``, ``decoder_loss``, ``lr``, ``grad_norm``, and ``eval_loss`` when the held-out
loss was computed at that step. The object of step 0, written before the first update when there is a
held-out split, has only ``step`` and ``eval_loss``: the baseline. On ``--resume`` lines after the
checkpoint's step (written by the interrupted run after its last checkpoint) are dropped, so every
step appears once.
"""

from __future__ import annotations

import json
from pathlib import Path

from csm_core.files import write_atomic

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict]:
    """The objects of a metrics file (a torn last line, from a kill mid-write, is left out)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends to ``path``; started afresh, or cut back to ``resume_step`` when resuming."""

    def __init__(self, path: Path, resume_step: int | None = None, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = [] if resume_step is None else [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
