"""The benchmark's JSON document and the Markdown table of ratios made from it.

JSON (``schema: "csm-multi-bench/1"``)::

    {"schema", "created", "machine": {cpu, cores, versions, gpu, ...},
     "run": {frames, repeats, warmup, utterances, text, seed, threads, device, bandwidth_gbs},
     "cells": [{"id", "preset", "backend", "optimizers": [...], "label" (with ``:key=value`` options),
                "options": {"options.<name>.<key>": value}, "status": "ok"|"skipped"|"error",
                "reason", "precision", "effects": {optimizer: "exact"|"approximate"},
                "figures": {frames, frames_per_second, real_time_factor, time_to_first_audio_s,
                            stage_seconds: {stage: s}, load_seconds, peak_rss_bytes, added_rss_bytes,
                            peak_device_bytes, paired_speedup, paired_ratios: [...],
                            repeat_code_agreement, x_floor, generation_seconds: [...], device,
                            speak_paths: [...], batch_sizes: [...] (only with utterances > 1)},
                "floor": {precision, bytes_per_frame, bandwidth_bytes_per_s, bandwidth_source,
                          seconds_per_frame, frames_per_second},
                "quality": {code_agreement, snr_db, log_spectral_distance_db, versus} | null,
                "events": [...]}]}

The Markdown has one table per preset. Ratios: ``speed-up`` is the paired speed-up over the ``none``
cell of the same backend and preset (:mod:`csm_bench.runner`), or the ratio of frames/s where no
pairing ran; ``vs reference`` over transformers' reference row; ``x floor``
is how many times the physical floor a frame takes (see :mod:`csm_bench.floor`).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from csm_bench.matrix import REFERENCE_BACKEND

SCHEMA = "csm-multi-bench/1"
MIB = 1024 * 1024


def build_document(results, run: dict, machine: dict) -> dict:
    """The JSON document of a run: ``results`` are :class:`~csm_bench.runner.CellResult`."""
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "run": run,
        "cells": [result.to_dict() for result in results],
    }


def read_document(path: Path) -> dict:
    """A document written by :func:`write_json`; another file raises naming the path and what it lacks."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a csm-multi bench document (schema {document.get('schema')!r}, "
                         f"expected {SCHEMA!r}); for pytest-benchmark JSON use `python -m benchmarks.report`")
    return document


def write_json(document: dict, path: Path) -> None:
    """Write ``document`` as strict JSON: infinite or NaN floats (an SNR of identical audio) become
    the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    from csm_core.files import write_atomic

    text = json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False)
    write_atomic(Path(path), (text + "\n").encode("utf-8"))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _fps(cell: dict | None) -> float | None:
    if cell is None or cell.get("status") != "ok":
        return None
    return (cell.get("figures") or {}).get("frames_per_second")


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def _number(value, fmt: str, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf" / "-inf" / "nan" as strict JSON stores them
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value * scale, fmt)


def floor_lines(cells: list[dict]) -> list[str]:
    """One sentence per (preset, precision, bandwidth) of the physical limit."""
    seen, lines = set(), []
    for cell in cells:
        floor = cell.get("floor")
        if not floor:
            continue
        key = (cell["preset"], floor["precision"], floor["bandwidth_bytes_per_s"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(
            f"- Physical limit, preset `{cell['preset']}` at {floor['precision']}: "
            f"{floor['bytes_per_frame'] / 1e6:.1f} MB of weights read per frame / "
            f"{floor['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, {floor['bandwidth_source']} = "
            f"{floor['seconds_per_frame'] * 1e3:.2f} ms per frame ({floor['frames_per_second']:.1f} frames/s)."
        )
    return lines


HEADER = ("| backend | optimizers | frames/s | RTF | first audio (ms) | speed-up vs none | vs reference | "
          "x floor | code agreement | SNR (dB) | LSD (dB) | peak RSS / added (MiB) | note |")
NOTE_CHARS = 160


def _row(cell: dict, cells: list[dict]) -> str:
    label = cell.get("label") or "+".join(cell["optimizers"]) or "none"
    if cell["effects"]:
        label += " (" + ", ".join(f"{e}" for e in dict.fromkeys(cell["effects"].values())) + ")"
    if cell["status"] != "ok":
        note = f"{cell['status']}: {cell['reason']}".replace("|", "/").replace("\n", " ")
        return f"| {cell['backend']} | {label} | - | - | - | - | - | - | - | - | - | - | {note} |"
    figures, quality = cell["figures"], cell.get("quality") or {}
    fps = figures.get("frames_per_second")
    baseline = _find(cells, cell["preset"], cell["backend"], [])
    reference = _find(cells, cell["preset"], REFERENCE_BACKEND, [])
    events = list(cell.get("events") or [])
    notes = [_shorten(events[0]) + (f" (+{len(events) - 1} more in bench.json)" if len(events) > 1 else "")] \
        if events else []
    if quality.get("note"):
        notes.append(quality["note"])
    exact = [name for name, effect in cell["effects"].items() if effect == "exact"]
    agreement = quality.get("code_agreement")
    if exact and len(exact) == len(cell["effects"]) and agreement is not None and agreement != 1.0:
        notes.append(f"QUALITY GATE FAILED: exact optimizer(s) {', '.join(exact)} changed the codes")
    if figures.get("speak_paths"):
        paths = ", ".join(dict.fromkeys(figures["speak_paths"]))
        notes.append(f"{len(figures['speak_paths'])} utterances per run, {paths} "
                     f"(largest batch {max(figures.get('batch_sizes') or [1])})")
    if figures.get("repeat_code_agreement", 1.0) < 1.0:
        notes.append(f"repeats differ (code agreement {figures['repeat_code_agreement']:.3f})")
    if figures.get("paired_speedup") is not None:
        speedup = f"{figures['paired_speedup']:.2f}x"
    else:
        speedup = "-" if cell["backend"] == REFERENCE_BACKEND else _ratio(fps, _fps(baseline))
    peak, added = figures.get("peak_rss_bytes"), figures.get("added_rss_bytes")
    memory = f"{_number(peak, '.0f', 1 / MIB)} / {_number(added, '.0f', 1 / MIB)}"
    return (
        f"| {cell['backend']} | {label} | {_number(fps, '.1f')} | {_number(figures.get('real_time_factor'), '.2f')} | "
        f"{_number(figures.get('time_to_first_audio_s'), '.0f', 1e3)} | {speedup} | "
        f"{_ratio(fps, _fps(reference))} | {_number(figures.get('x_floor'), '.1f')} | "
        f"{_number(quality.get('code_agreement'), '.3f')} | {_number(quality.get('snr_db'), '.1f')} | "
        f"{_number(quality.get('log_spectral_distance_db'), '.2f')} | "
        f"{memory} | {'; '.join(notes).replace('|', '/')} |"
    )


def _shorten(text: str) -> str:
    return text if len(text) <= NOTE_CHARS else text[: NOTE_CHARS - 3] + "..."


def _find(cells: list[dict], preset: str, backend: str, optimizers: list[str]) -> dict | None:
    for cell in cells:
        if cell["preset"] == preset and cell["backend"] == backend and list(cell["optimizers"]) == optimizers:
            return cell
    return None


def _load(machine: dict) -> str:
    load = machine.get("load_average")
    return f", load average {load[0]:.1f} (other work shares the cores when it exceeds them)" if load else ""


def _utterances(run: dict) -> str:
    count = run.get("utterances", 1)
    if count == 1:
        return ""
    return (f" x {count} utterances per run through speak_many (batched in the batched-generation cell, one by "
            "one elsewhere; frames/s = total frames / wall seconds, first audio = the run's first chunk, "
            "codes compared concatenated)")


def markdown(document: dict) -> str:
    """The document as Markdown: machine, run settings, the floor, and a table of ratios per preset."""
    machine, run, cells = document.get("machine", {}), document.get("run", {}), document["cells"]
    versions = ", ".join(f"{name} {version}" for name, version in (machine.get("versions") or {}).items())
    lines = [
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
        f"{', GPU ' + machine['gpu'] if machine.get('gpu') else ''}; {versions}. Run {document.get('created', '?')}"
        f"{_load(machine)}.",
        "",
        f"Each cell: greedy, seed {run.get('seed', '?')}, {run.get('frames', '?')} frames"
        f"{_utterances(run)}, "
        f"{run.get('warmup', '?')} warm-up + median of {run.get('repeats', '?')} runs; frames/s and RTF cover the "
        "whole TTS stage (CSM + Mimi decode of each frame); the transformers reference generates codes only. "
        "Speed-up vs none is paired (baseline and optimized utterances alternate, ABBA) where the baseline ran in "
        "the same run, else a ratio of frames/s. Peak RSS is the process's; added is the peak above the RSS at "
        "the cell's start.",
        "",
        *floor_lines(cells),
        "",
    ]
    for preset in dict.fromkeys(cell["preset"] for cell in cells):
        lines += [f"### preset `{preset}`", "", HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
        lines += [_row(cell, cells) for cell in cells if cell["preset"] == preset]
        lines.append("")
    return "\n".join(lines)
