"""``csmctl bench``: run a matrix of backend x optimizer set x preset and write JSON, Markdown and PNG.

The command function :func:`bench` is written for typer; :mod:`csm_bench.plugin` makes it the
callback of the ``csmctl bench`` group (and ``python -m csm_bench`` runs it alone). Nothing heavy is
imported until it runs.

Bad input (the matrix strings, numbers, ``--text``, ``--device``, ``--config``, an ``--out`` that is a
file or cannot be created or written) exits with status 2 before torch is imported. The three reports
are written together at the end, each to a temporary file first and then renamed over its name, so a
run that fails or is interrupted (status 130) leaves the files in ``--out`` as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from csm_core.errors import CsmError

log = logging.getLogger("csm.bench")


def bench(
    ctx: typer.Context,
    backends: Annotated[str, typer.Option("--backends", help="Comma-separated backends; "
                                          "'transformers-reference' adds transformers' generate as a reference row.")]
    = "pytorch,onnxruntime",
    optimizers: Annotated[str, typer.Option("--optimizers", help="Comma-separated optimizer sets: 'none' (the "
                                            "baseline), a name, or names joined by '+'.")] = "none",
    presets: Annotated[str, typer.Option("--presets", help="Comma-separated presets: tiny, small, csm-1b.")] = "small",
    frames: Annotated[int, typer.Option("--frames", help="Frames generated per run (80 ms each).")] = 24,
    repeats: Annotated[int, typer.Option("--repeats", help="Measured runs per cell (the median is reported).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured runs per cell before the measured ones.")] = 1,
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for bench.json, bench.md and bench.png.")]
    = "bench-results",
    bandwidth_gbs: Annotated[Optional[float], typer.Option("--bandwidth-gbs", help="Memory bandwidth in GB/s for "
                                                           "the physical floor; measured when left out.")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="The sentence every cell speaks.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch and ONNX Runtime.")]
    = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config the cells start from.")]
    = None,
    utterances: Annotated[int, typer.Option("--utterances", help="Utterances per measured run, spoken through "
                                            "speak_many (the text, then the text with a growing numeral suffix): "
                                            "batched in the batched-generation cell, one by one in the others; "
                                            "figures cover all of them (frames/s = total frames / wall seconds, "
                                            "first audio = the run's first chunk, codes concatenated in order). "
                                            "1 speaks the text once, as Pipeline.speak.")] = 1,
) -> None:
    """Benchmark backends x optimizer sets x presets; write bench.json, bench.md (ratios) and bench.png.

    Plugins add subcommands (``csmctl bench serve``); with one, this matrix does not run."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        paths, failed = run_bench(
            backends=backends, optimizers=optimizers, presets=presets, frames=frames, repeats=repeats,
            warmup=warmup, out=out, bandwidth_gbs=bandwidth_gbs, text=text, threads=threads, device=device,
            config=config, utterances=utterances,
        )
    except CsmError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.secho(f"interrupted: nothing written ({out} left as it was; the reports are written when every "
                    "cell has run)", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    for path in paths:
        typer.echo(f"wrote {path}")
    if failed:
        typer.secho(f"error: {failed} cell(s) failed; see the note column of {paths[1]}", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(1)


def run_bench(*, backends: str, optimizers: str, presets: str, frames: int, repeats: int, warmup: int,
              out: str | Path,
              bandwidth_gbs: float | None = None, text: str | None = None, threads: int | None = None,
              device: str | None = None, config: Path | None = None,
              utterances: int = 1) -> tuple[list[Path], int]:
    """Run the matrix with a progress bar; returns (the files written, the number of failed cells)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from csm_bench.matrix import parse_matrix, split_names
    from csm_bench.session import DEFAULT_TEXT, RunOptions, cell_settings
    from csm_core.output_paths import check_output_folder
    from csm_core.user_text import check_text

    if text is not None:
        check_text(text, "--text")
    options = RunOptions(frames=frames, repeats=repeats, warmup=warmup, text=DEFAULT_TEXT if text is None else text,
                         threads=threads, device=device, config=config, bandwidth_gbs=bandwidth_gbs,
                         utterances=utterances)
    # Syntax, --device, --config and --out first: they fail in a moment, before torch is imported.
    cells = parse_matrix(backends, optimizers, presets, known_presets=split_names(presets, "--presets"))
    cell_settings(cells[0], options)
    out = check_output_folder(out, "--out")
    from csm_model.presets import PRESETS  # imports torch

    cells = parse_matrix(backends, optimizers, presets, PRESETS)

    from csm_bench.machine import machine_info
    from csm_bench.plot import plot
    from csm_bench.report import build_document, markdown, write_json
    from csm_bench.runner import run_matrix
    from csm_core.files import replace_together

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("benchmark", total=len(cells))

        def on_cell(cell, result) -> None:
            if result is None:
                progress.update(task, description=f"running {cell.id}")
                return
            progress.advance(task)
            if result.status != "ok":
                progress.console.print(f"{cell.id}: {result.status}: {result.reason}")

        results = run_matrix(cells, options, on_cell=on_cell)
    run = {"frames": frames, "repeats": repeats, "warmup": warmup, "utterances": utterances, "text": options.text,
           "seed": options.seed,
           "threads": threads, "device": device, "bandwidth_gbs": bandwidth_gbs,
           "matrix": {"backends": backends, "optimizers": optimizers, "presets": presets}}
    document = build_document(results, run, machine_info())
    paths = [out / "bench.json", out / "bench.md", out / "bench.png"]
    created = _make_folder(out)
    try:
        with replace_together(*paths) as temporaries:
            write_json(document, temporaries[0])
            temporaries[1].write_bytes((markdown(document) + "\n").encode("utf-8"))
            plot(document, temporaries[2])
    except BaseException:
        for folder in created:  # the folders this run made, deepest first, while they are empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return paths, sum(result.status == "error" for result in results)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return missing
