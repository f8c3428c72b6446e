"""The load benchmark's JSON document, its Markdown tables and its PNG plot (``csmctl bench serve``).

JSON (``schema: "csm-multi-bench-serve/2"``)::

    {"schema", "created", "machine": {cpu, cores, versions, ...},
     "run": {url, started_server, preset, threads, ray, replicas, max_rows: [...] | null,
             rss_scope ("process", or "process tree" with ray), clients: [...],
             requests_per_client, text, max_new_tokens, model, voice, response_format, stream_format,
             frame_seconds, sample_rate},
     "runs": [{"max_rows": the server's [options.serve] max_rows (null: as configured), "server_command",
               "server_pid", "ready_seconds", "server_peak_rss_bytes": VmHWM at the end (null with --url),
               "levels": [{"clients", "requests", "ok", "rejected", "errors", "wall_seconds", "audio_seconds",
                           "audio_seconds_per_second", "frames", "time_to_first_audio_s": {p50, p95, max},
                           "chunk_gap_s": {p50, p95, max, count}, "server_peak_rss_bytes",
                           "server": {frames_generated, jobs_done, rejected_429} | null,
                           "results": [{client, index, status, ok, rejected, error, time_to_first_audio_s,
                                        total_seconds, bytes, frames, audio_seconds, chunk_gap_p95_s,
                                        chunk_gap_max_s}]}]}],
     "comparison": [{"clients", "runs": [{"max_rows", "audio_seconds_per_second", "throughput_ratio",
                                          "time_to_first_audio_p95_s"}]}]}

One run per server setting (``--max-rows 1,4``: two servers, started one after another on the same
machine); ``comparison`` puts them side by side per client level, ``throughput_ratio`` being a run's
audio seconds per second over the first run's (so ``--max-rows 1,...`` gives batching's gain over
one request at a time).

Times are what the clients saw: time to first audio is from sending the request to receiving the
first byte of audio (queue wait included); a chunk gap is the time between two 80 ms frames of PCM
arriving (frame boundaries counted in the byte stream, so TCP's splitting does not count); audio
seconds are PCM bytes / 2 / sample rate. A level's throughput is its audio seconds / its wall time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

SCHEMA = "csm-multi-bench-serve/2"
MIB = 1024 * 1024


def build_document(runs: list[dict], run: dict, machine: dict) -> dict:
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "run": run,
        "runs": runs,
        "comparison": comparison(runs),
    }


def comparison(runs: list[dict]) -> list[dict]:
    """Per client level, every run's throughput, its ratio to the first run's, and its first-audio p95."""
    out = []
    for index, level in enumerate(runs[0]["levels"]):
        base = level["audio_seconds_per_second"]
        entries = []
        for run in runs:
            mine = run["levels"][index]
            throughput = mine["audio_seconds_per_second"]
            entries.append({
                "max_rows": run["max_rows"],
                "audio_seconds_per_second": throughput,
                "throughput_ratio": throughput / base if throughput is not None and base else None,
                "time_to_first_audio_p95_s": mine["time_to_first_audio_s"]["p95"],
            })
        out.append({"clients": level["clients"], "runs": entries})
    return out


def run_label(run: dict) -> str:
    return "server as configured" if run["max_rows"] is None else f"max_rows {run['max_rows']}"


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def _mib(value) -> str:
    return "-" if value is None else f"{value / MIB:.0f}"


HEADER = ("| clients | requests ok / rejected / errors | audio s / s | first audio p50 / p95 (ms) | "
          "chunk gap p95 / max (ms) | audio s | wall s | server peak RSS (MiB) |")


def _row(level: dict) -> str:
    ttfa, gap = level["time_to_first_audio_s"], level["chunk_gap_s"]
    throughput = level["audio_seconds_per_second"]
    return (f"| {level['clients']} | {level['ok']} / {level['rejected']} / {level['errors']} | "
            f"{'-' if throughput is None else f'{throughput:.2f}'} | {_ms(ttfa['p50'])} / {_ms(ttfa['p95'])} | "
            f"{_ms(gap['p95'])} / {_ms(gap['max'])} | {level['audio_seconds']:.2f} | {level['wall_seconds']:.1f} | "
            f"{_mib(level['server_peak_rss_bytes'])} |")


def markdown(document: dict) -> str:
    machine, run, runs = document.get("machine", {}), document["run"], document["runs"]
    versions = ", ".join(f"{name} {version}" for name, version in (machine.get("versions") or {}).items())
    load = machine.get("load_average")
    commands = [f"`{' '.join(r['server_command'])}`" for r in runs if r.get("server_command")]
    if run.get("started_server"):
        server = "servers started by `csmctl bench serve`, one after another" if len(runs) > 1 else \
            "a server started by `csmctl bench serve`"
        server += " (" + "; ".join(commands) + ")"
        if run.get("max_rows"):
            server += ", with `[options.serve] max_rows` " + ", ".join(str(r) for r in run["max_rows"])
    else:
        server = f"the running server at {run['url']}"
    lines = [
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; {versions}. "
        f"Run {document.get('created', '?')}" + (f", load average {load[0]:.1f}" if load else "") + ".",
        "",
        f"Server: {server}; preset `{run.get('preset') or '-'}`, at most {run.get('max_new_tokens') or '?'} frames "
        f"per utterance. Each client sends {run['requests_per_client']} request(s) one after another: POST "
        f"/v1/audio/speech, `{run['response_format']}`, stream_format `{run['stream_format']}`, voice "
        f"`{run['voice']}`, text \"{run['text']}\".",
        "",
        "audio s / s: seconds of audio received by all clients / wall seconds of the level (1.0 = one real-time "
        "stream). First audio: sending the request to its first audio byte (queue wait included). Chunk gap: time "
        "between two 80 ms frames arriving within a response (over 80 ms, a player keeping pace would stall). "
        + ("Server peak RSS: the highest sum of VmRSS over the process tree of `csmctl serve --ray` (the CLI, Ray's "
         "GCS, raylet, proxy and controller, and every replica) sampled during the level."
         if run.get("ray") else "Server peak RSS: the highest VmRSS of the server process sampled during the level."),
        "",
    ]
    if len(runs) > 1:
        lines += _comparison_table(document["comparison"], runs)
    for one in runs:
        if len(runs) > 1:
            lines += [f"#### {run_label(one)}", ""]
        lines += [HEADER, "|" + " --- |" * (HEADER.count("|") - 1), *[_row(level) for level in one["levels"]], ""]
        if one.get("server_peak_rss_bytes"):
            scope = " (summed over its process tree)" if run.get("ray") else ""
            lines += [f"Server VmHWM (peak RSS of its whole life){scope}: {_mib(one['server_peak_rss_bytes'])} MiB.", ""]
    errors = [f"- {run_label(one)}, {level['clients']} client(s), client {r['client']} request {r['index']}: {r['error']}"
              for one in runs for level in one["levels"] for r in level["results"] if r["error"]]
    if errors:
        lines += ["Failed or rejected requests:", "", *errors[:20]]
        if len(errors) > 20:
            lines.append(f"- ... {len(errors) - 20} more in bench-serve.json")
        lines.append("")
    return "\n".join(lines)


def _comparison_table(rows: list[dict], runs: list[dict]) -> list[str]:
    """Clients x runs: audio s / s (its ratio to the first run) and first-audio p95."""
    header = "| clients | " + " | ".join(f"{run_label(r)}: audio s / s (x first), first audio p95 ms" for r in runs) + " |"
    lines = [f"Side by side (ratios to {run_label(runs[0])}, same machine, one run):", "", header,
             "|" + " --- |" * (len(runs) + 1)]
    for row in rows:
        cells = []
        for entry in row["runs"]:
            throughput, ratio = entry["audio_seconds_per_second"], entry["throughput_ratio"]
            cells.append(("-" if throughput is None else f"{throughput:.2f}")
                         + ("" if ratio is None else f" ({ratio:.2f}x)") + f", {_ms(entry['time_to_first_audio_p95_s'])}")
        lines.append(f"| {row['clients']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot(document: dict, path: Path) -> Path:
    """Two panels: throughput (audio s / s) and time to first audio (p50, p95) against clients, one line
    per run (server setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = document["runs"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.5))
    clients: list[int] = []
    for one in runs:
        levels = one["levels"]
        clients = [level["clients"] for level in levels]
        name = run_label(one) if len(runs) > 1 else None
        throughput = [level["audio_seconds_per_second"] or 0.0 for level in levels]
        left.plot(clients, throughput, marker="o", label=name)
        for x, y in zip(clients, throughput):
            left.annotate(f"{y:.2f}", (x, y), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=8)
        for quantile, style in (("p50", "o-"), ("p95", "s--")):
            values = [level["time_to_first_audio_s"][quantile] for level in levels]
            points = [(x, v * 1e3) for x, v in zip(clients, values) if v is not None]
            if points:
                right.plot(*zip(*points), style, label=quantile if name is None else f"{name} {quantile}")
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    left.set_xlabel("concurrent clients")
    left.set_ylabel("audio seconds per second")
    left.set_title("throughput (higher is better; 1.0 = real time)")
    if len(runs) > 1:
        left.legend(fontsize=8)
    right.set_xlabel("concurrent clients")
    right.set_ylabel("time to first audio (ms)")
    right.set_title("time to first audio (lower is better)")
    right.legend(fontsize=8)
    for axis in (left, right):
        if clients:
            axis.set_xscale("log", base=2)
            axis.set_xticks(clients, [str(c) for c in clients])
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    run = document["run"]
    where = ""
    if run.get("ray"):
        where = f", Ray Serve ({run['replicas']} replicas)" if run.get("replicas") else ", Ray Serve"
    figure.suptitle(f"csmctl bench serve: preset {run.get('preset') or '-'}, {run['requests_per_client']} request(s) "
                    f"per client, at most {run.get('max_new_tokens') or '?'} frames{where}", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
    return path
