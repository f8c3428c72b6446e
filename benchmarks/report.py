"""Turn a pytest-benchmark JSON file into a Markdown table of ratios, side by side within each group.

    python -m benchmarks.report .benchmarks/Linux-CPython-3.11-64bit/0001_run.json

Each row is one benchmark; ``speed-up`` is the group's slowest mean time divided by the row's, so
every number compares runs of one session on one machine. Whole-turn rows (``test_bench_turn``) also
show the multiple of the physical floor and, for optimized cells, the code agreement with the ``none``
cell. ``csmctl bench`` writes its own, richer table (:mod:`csm_bench.report`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def markdown(report: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in report["benchmarks"]:
        groups[bench.get("group") or "ungrouped"].append(bench)
    machine = report.get("machine_info", {})
    lines = [
        f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python {machine.get('python_version', '?')}; "
        f"run {report.get('datetime', '?')}",
        "",
    ]
    for group, benches in sorted(groups.items()):
        slowest = max(b["stats"]["mean"] for b in benches)
        lines += [f"### {group}", "",
                  "| benchmark | mean (s) | frames/s | real-time factor | speed-up | x floor | code agreement |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for bench in sorted(benches, key=lambda b: b["stats"]["mean"]):
            info, mean = bench.get("extra_info", {}), bench["stats"]["mean"]
            fps = info.get("frames_per_second")
            rtf = info.get("real_time_factor")
            x_floor = info.get("x_floor")
            agreement = (info.get("quality") or {}).get("code_agreement")
            lines.append(
                f"| {bench['name']} | {mean:.3f} | {'-' if fps is None else f'{fps:.1f}'} | "
                f"{'-' if rtf is None else f'{rtf:.2f}'} | {slowest / mean:.2f}x | "
                f"{'-' if x_floor is None else f'{x_floor:.1f}'} | {'-' if agreement is None else f'{agreement:.3f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.report BENCHMARK.json")
    print(markdown(json.loads(Path(argv[0]).read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
