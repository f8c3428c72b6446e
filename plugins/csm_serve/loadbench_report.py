"""The load benchmark's JSON document, its Markdown table and its PNG plot (``csmctl bench serve``).

JSON (``schema: "csm-multi-bench-serve/1"``)::

    {"schema", "created", "machine": {cpu, cores, versions, ...},
     "run": {url, started_server, server_command, server_pid, ready_seconds, preset, threads, ray, replicas,
             rss_scope ("process", or "process tree" with ray), clients: [...],
             requests_per_client, text, max_new_tokens, model, voice, response_format, stream_format,
             frame_seconds, sample_rate},
     "server_peak_rss_bytes": VmHWM of the started server at the end (null with --url),
     "levels": [{"clients", "requests", "ok", "rejected", "errors", "wall_seconds", "audio_seconds",
                 "audio_seconds_per_second", "frames", "time_to_first_audio_s": {p50, p95, max},
                 "chunk_gap_s": {p50, p95, max, count}, "server_peak_rss_bytes",
                 "server": {frames_generated, jobs_done, rejected_429} | null,
                 "results": [{client, index, status, ok, rejected, error, time_to_first_audio_s,
                              total_seconds, bytes, frames, audio_seconds, chunk_gap_p95_s,
                              chunk_gap_max_s}]}]}

Times are what the clients saw: time to first audio is from sending the request to receiving the
first byte of audio (queue wait included); a chunk gap is the time between two 80 ms frames of PCM
arriving (frame boundaries counted in the byte stream, so TCP's splitting does not count); audio
seconds are PCM bytes / 2 / sample rate. A level's throughput is its audio seconds / its wall time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

SCHEMA = "csm-multi-bench-serve/1"
MIB = 1024 * 1024


def build_document(levels: list[dict], run: dict, machine: dict, server_peak_rss_bytes: int | None) -> dict:
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "run": run,
        "server_peak_rss_bytes": server_peak_rss_bytes,
        "levels": levels,
    }


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
    machine, run = document.get("machine", {}), document["run"]
    versions = ", ".join(f"{name} {version}" for name, version in (machine.get("versions") or {}).items())
    load = machine.get("load_average")
    server = (f"a server started by `csmctl bench serve` (`{' '.join(run['server_command'])}`)" if run.get("started_server")
              else f"the running server at {run['url']}")
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
        HEADER,
        "|" + " --- |" * (HEADER.count("|") - 1),
        *[_row(level) for level in document["levels"]],
        "",
    ]
    if document.get("server_peak_rss_bytes"):
        scope = " (summed over its process tree)" if run.get("ray") else ""
        lines += [f"Server VmHWM (peak RSS of its whole life){scope}: {_mib(document['server_peak_rss_bytes'])} MiB.", ""]
    errors = [f"- {level['clients']} client(s), client {r['client']} request {r['index']}: {r['error']}"
              for level in document["levels"] for r in level["results"] if r["error"]]
    if errors:
        lines += ["Failed or rejected requests:", "", *errors[:20]]
        if len(errors) > 20:
            lines.append(f"- ... {len(errors) - 20} more in bench-serve.json")
        lines.append("")
    return "\n".join(lines)


def plot(document: dict, path: Path) -> Path:
    """Two panels: throughput (audio s / s) and time to first audio (p50, p95) against clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = document["levels"]
    clients = [level["clients"] for level in levels]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.5))
    throughput = [level["audio_seconds_per_second"] or 0.0 for level in levels]
    left.plot(clients, throughput, marker="o")
    for x, y in zip(clients, throughput):
        left.annotate(f"{y:.2f}", (x, y), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=8)
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    left.set_xlabel("concurrent clients")
    left.set_ylabel("audio seconds per second")
    left.set_title("throughput (higher is better; 1.0 = real time)")
    for quantile, style in (("p50", "o-"), ("p95", "s--")):
        values = [level["time_to_first_audio_s"][quantile] for level in levels]
        points = [(x, v * 1e3) for x, v in zip(clients, values) if v is not None]
        if points:
            right.plot(*zip(*points), style, label=quantile)
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
