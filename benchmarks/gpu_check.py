"""The GPU check: one command that shows what only a GPU can, and writes it down.

    benchmarks/gpu_check.sh OUT_DIR          # or: python -m benchmarks.gpu_check OUT_DIR

On a machine with an NVIDIA GPU and the packages of the project's extras, it

1. records the machine (GPU, driver, torch/CUDA, onnxruntime and its providers, TensorRT) in
   ``OUT_DIR/environment.json``;
2. runs the GPU-marked tests (``pytest -m "gpu or tensorrt"``): ``OUT_DIR/gpu-tests.xml`` and ``.log``;
3. runs a short ``csmctl bench`` on ``csm-1b`` dimensions with ``--device cuda``: pytorch fp32 and bf16
   (``selective-precision``), ``cuda-graphs`` with both, ``pipelined-decoding`` (Mimi on its own CUDA
   stream) and ``fused-frame`` (onnxruntime's whole-frame graph), onnxruntime's CUDA provider and tensorrt
   where the machine has them, transformers' ``generate`` as the reference row: ``OUT_DIR/bench/``;
4. writes ``OUT_DIR/summary.json`` and ``OUT_DIR/summary.md``: what ran, what was missing and why, the
   test counts, the bench table, and the csm-1b targets (bf16, batch 1: within 1.5x of the bandwidth
   floor, first audio under 100 ms, at least 10x transformers' generate) read off the bench.

It installs and downloads nothing: it uses the torch, onnxruntime and tensorrt the machine has, and a
missing one is reported in the summary, not fatal. Without a CUDA GPU it stops at once with exit status
2 and says so. Exit status 1: a test failed, or the bench did not finish or had a failed cell. The
steps have time limits (``--tests-timeout``, ``--bench-timeout``) so the whole check stays under 8
minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

OPTIMIZER_SETS = "none,selective-precision,cuda-graphs,cuda-graphs+selective-precision,pipelined-decoding,fused-frame"
REFERENCE = "transformers-reference"
# The csm-1b targets of the GPU check (bf16, batch 1), read off the bench's best pytorch bf16 cell.
TARGETS = {"x_floor": 1.5, "time_to_first_audio_s": 0.100, "vs_reference": 10.0}


class CheckError(Exception):
    """The check cannot run here at all (exit status 2)."""


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def probe() -> dict:
    """What this machine has for the check; raises :class:`CheckError` without torch or a CUDA GPU."""
    if importlib.util.find_spec("torch") is None:
        raise CheckError("the GPU check needs torch with CUDA: no torch is installed (pip install 'csm-multi[torch]' "
                         "with a CUDA build of torch)")
    import torch

    if not torch.cuda.is_available():
        raise CheckError(f"the GPU check needs a CUDA GPU, and torch {torch.__version__} sees none "
                         f"(CUDA build: {torch.version.cuda or 'no, a CPU build'}): run it on a machine with an "
                         "NVIDIA GPU and a CUDA build of torch")
    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": _driver(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in (
            "transformers", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript", "tensorrt", "numpy", "csm-multi")},
        "missing": {},
    }
    env["onnxruntime_providers"] = _ort_providers(env["missing"])
    env["tensorrt"] = _tensorrt(env["missing"])
    return env


def _driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def _ort_providers(missing: dict) -> list[str] | None:
    if importlib.util.find_spec("onnxruntime") is None:
        missing["onnxruntime"] = "onnxruntime is not installed: the onnxruntime rows are left out"
        return None
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        missing["onnxruntime"] = (f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
                                  f"({', '.join(providers)}; install onnxruntime-gpu): the onnxruntime rows are left out")
    return providers


def _tensorrt(missing: dict) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        missing["tensorrt"] = ("TensorRT is not installed (pip install 'csm-multi[tensorrt]'): the tensorrt rows and "
                               "tests are left out")
        return None
    return _version("tensorrt") or "installed"


def backends_for(env: dict) -> list[str]:
    """The bench's backends on this machine: pytorch, and onnxruntime/tensorrt where they can use the GPU."""
    backends = ["pytorch"]
    if "onnxruntime" not in env["missing"]:
        backends.append("onnxruntime")
    if "tensorrt" not in env["missing"]:
        backends.append("tensorrt")
    return backends + [REFERENCE]


def run_step(name: str, command: list[str], log: Path, timeout: float) -> dict:
    """Run ``command`` with its output in ``log`` (and echoed); returns its status, seconds and exit code."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in process.stdout:  # type: ignore[union-attr]
                out.write(line)
                sys.stdout.write(line)
                if time.perf_counter() - started > timeout:
                    raise subprocess.TimeoutExpired(command, timeout)
            process.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"status": "timeout", "seconds": round(time.perf_counter() - started, 1), "exit_code": None,
                    "log": log.name, "reason": f"stopped after its {timeout:.0f} s limit"}
    status = "ok" if process.returncode == 0 else "failed"
    return {"status": status, "seconds": round(time.perf_counter() - started, 1), "exit_code": process.returncode,
            "log": log.name}


def test_counts(junit: Path) -> dict:
    """Counts of a pytest JUnit XML file, with the name and message of every failure."""
    if not junit.is_file():
        return {}
    root = ElementTree.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["problems"] = [
        {"test": f"{case.get('classname')}::{case.get('name')}", "kind": child.tag,
         "message": (child.get("message") or "")[:500]}
        for case in root.iter("testcase") for child in case if child.tag in ("failure", "error", "skipped")
    ]
    return counts


def _backbone_bf16(precision: str) -> bool:
    """Whether a bench precision label (``bf16``, or ``backbone bf16, decoder bf16, heads fp32``) runs the backbone in bf16."""
    return precision == "bf16" or "backbone bf16" in precision


def targets(document: dict) -> list[dict]:
    """The csm-1b targets checked against the best pytorch cell whose backbone runs in bf16."""
    cells = [c for c in document.get("cells", []) if c["status"] == "ok" and c["backend"] == "pytorch"
             and c["preset"] == "csm-1b" and _backbone_bf16(c.get("precision") or "")]
    if not cells:
        return [{"target": name, "limit": limit, "value": None, "met": None, "cell": None,
                 "note": "no pytorch bf16 cell ran"} for name, limit in TARGETS.items()]
    best = max(cells, key=lambda c: c["figures"].get("frames_per_second") or 0)
    figures = best["figures"]
    reference = next((c for c in document["cells"] if c["backend"] == REFERENCE and c["status"] == "ok"
                      and c["preset"] == best["preset"]), None)
    ref_fps = reference["figures"].get("frames_per_second") if reference else None
    values = {
        "x_floor": figures.get("x_floor"),
        "time_to_first_audio_s": figures.get("time_to_first_audio_s"),
        "vs_reference": figures["frames_per_second"] / ref_fps if ref_fps else None,
    }
    rows = []
    for name, limit in TARGETS.items():
        value = values[name]
        met = None if value is None else (value >= limit if name == "vs_reference" else value <= limit)
        rows.append({"target": name, "limit": limit, "value": value, "met": met, "cell": best["id"]})
    return rows


def summary_markdown(summary: dict, bench_md: str | None) -> str:
    env = summary["environment"]
    lines = [
        f"# GPU check: {env['gpu']} (compute capability {env['compute_capability']}, {env['gpu_memory_gib']} GiB)",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), driver {env['driver'] or 'unknown'}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        + f"; onnxruntime providers: {', '.join(env['onnxruntime_providers'] or ['none'])}.",
        "",
        "## Missing here",
        "",
    ]
    lines += [f"- {reason}" for reason in env["missing"].values()] or ["- nothing"]
    tests = summary["steps"].get("tests", {})
    counts = tests.get("counts") or {}
    lines += ["", "## GPU-marked tests", "",
              f"`{tests.get('command', '')}`: {tests.get('status')} in {tests.get('seconds')} s; "
              + (", ".join(f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped")) if counts else
                 "no counts (see the log)"), ""]
    lines += [f"- {p['kind']}: {p['test']}: {p['message']}" for p in counts.get("problems", [])]
    bench = summary["steps"].get("bench", {})
    lines += ["", "## Bench", "", f"`{bench.get('command', '')}`: {bench.get('status')} in {bench.get('seconds')} s",
              ""]
    if bench_md:
        lines += [bench_md.strip(), ""]
    lines += ["## csm-1b targets (bf16, batch 1)", "", "| target | limit | value | met | cell |", "| --- | --- | --- | --- | --- |"]
    for row in summary["targets"]:
        value = "-" if row["value"] is None else f"{row['value']:.3g}"
        met = {True: "yes", False: "no", None: "-"}[row["met"]]
        lines.append(f"| {row['target']} | {row['limit']} | {value} | {met} | {row['cell'] or row.get('note', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for environment.json, the test log, bench/ and summary.*")
    parser.add_argument("--preset", default="csm-1b", help="bench preset (default csm-1b)")
    parser.add_argument("--frames", type=int, default=24, help="frames per bench run (default 24)")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs per bench cell (default 2)")
    parser.add_argument("--optimizers", default=OPTIMIZER_SETS, help=f"bench optimizer sets (default {OPTIMIZER_SETS})")
    parser.add_argument("--tests-timeout", type=float, default=150.0, help="seconds for the tests (default 150)")
    parser.add_argument("--bench-timeout", type=float, default=300.0, help="seconds for the bench (default 300)")
    parser.add_argument("--skip-tests", action="store_true", help="only the bench")
    parser.add_argument("--skip-bench", action="store_true", help="only the tests")
    args = parser.parse_args(argv)

    out: Path = args.out
    if out.exists() and not out.is_dir():
        print(f"error: OUT_DIR {str(out)!r} is a file: give a folder", file=sys.stderr)
        return 2
    try:
        env = probe()
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    for reason in env["missing"].values():
        print(f"note: {reason}", flush=True)

    repo = Path(__file__).resolve().parent.parent
    os.chdir(repo)
    summary: dict = {"environment": env, "steps": {}, "targets": []}
    if not args.skip_tests:
        command = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-rs", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={out / 'gpu-tests.xml'}"]
        step = run_step("GPU-marked tests", command, out / "gpu-tests.log", args.tests_timeout)
        step.update(command=" ".join(command[1:]), counts=test_counts(out / "gpu-tests.xml"))
        summary["steps"]["tests"] = step
    bench_md = None
    if not args.skip_bench:
        command = [sys.executable, "-m", "csm_bench", "--device", "cuda", "--presets", args.preset,
                   "--backends", ",".join(backends_for(env)), "--optimizers", args.optimizers,
                   "--frames", str(args.frames), "--repeats", str(args.repeats), "--out", str(out / "bench")]
        step = run_step("bench", command, out / "bench.log", args.bench_timeout)
        step["command"] = "csmctl bench " + " ".join(command[3:])
        summary["steps"]["bench"] = step
        document_path = out / "bench" / "bench.json"
        if document_path.is_file():
            summary["targets"] = targets(json.loads(document_path.read_text(encoding="utf-8")))
            bench_md = (out / "bench" / "bench.md").read_text(encoding="utf-8")
        else:
            summary["targets"] = targets({})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary, bench_md), encoding="utf-8")
    print(f"wrote {out / 'summary.md'}")
    failed = [name for name, step in summary["steps"].items() if step["status"] != "ok"]
    if failed:
        print(f"error: {', '.join(failed)} did not pass; see {out / 'summary.md'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
