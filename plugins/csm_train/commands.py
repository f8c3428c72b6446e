"""``csmctl train``: fine-tune CSM on recordings and their transcripts.

This module imports nothing heavy (``csmctl`` imports it at every start through the
``register_commands`` hook): torch, peft and the trainer are imported when the command runs.

Every refusal of bad input is one ``error: ...`` line and exit status 2, before any model loads where
it can be checked then: the settings (config file, ``[options.train]``, flags), the data path, the
output folder (a folder that already holds a run needs ``--resume``; ``--resume`` needs one).
Ctrl-C exits with status 130 and says which checkpoint ``--resume`` will continue from.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from csm_core.cli import EXIT_INTERRUPTED, _fail  # the CLI's one error: line and exit statuses
from csm_core.errors import CsmError

__all__ = ["add_train_command", "build_options"]


def build_options(settings, flags: dict):
    """``[options.train]`` of ``settings`` with the given ``flags`` (None: not given) on top."""
    from pydantic import ValidationError

    from csm_core.config import format_validation_error, plugin_options
    from csm_core.errors import ConfigError

    from .options import TrainOptions

    base = plugin_options(settings, "train", TrainOptions)
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return TrainOptions.model_validate({**base.model_dump(exclude_unset=True), **given})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "[options.train] and flags")) from None


def _check_output(output_dir: Path, resume: bool) -> None:
    from csm_core.output_paths import check_output_folder

    from .checkpoint import latest_checkpoint

    check_output_folder(output_dir, "--output-dir")
    latest = latest_checkpoint(output_dir) if output_dir.is_dir() else None
    if resume and latest is None:
        raise CsmError(f"--resume: {output_dir} holds no checkpoint to resume (checkpoints/step-*); run without --resume to start")
    if not resume and latest is not None:
        raise CsmError(
            f"--output-dir {output_dir} already holds a training run (latest checkpoint {latest.name}): "
            "pass --resume to continue it, or choose another folder"
        )


def _print_data(prepared) -> None:
    report = prepared.report
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    for problem in report.skipped:
        typer.secho(f"skipped: {problem}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        f"data: {report.used} of {report.rows} rows used ({len(report.skipped)} skipped), {report.encoded} clips "
        f"encoded, {report.reused} reused from the cache; {len(prepared.train)} training and "
        f"{len(prepared.eval)} held-out samples"
    )


def add_train_command(cli: typer.Typer) -> None:
    """Add ``train`` to ``cli``."""

    @cli.command("train")
    def train(
        data: Annotated[Path, typer.Argument(help="Manifest (.jsonl or .csv: audio, text, speaker, conversation, start, end) or a folder of recordings with .txt transcripts.")],
        output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for checkpoints, metrics.jsonl and final/.")],
        preset: Annotated[Optional[str], typer.Option("--preset", help="Start from random weights of a preset size: tiny, small, csm-1b.")] = None,
        model_path: Annotated[Optional[Path], typer.Option("--model-path", "-w", help="Start from this CSM checkpoint directory.")] = None,
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file (training settings in its options.train table).")] = None,
        steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps.")] = None,
        lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="Train LoRA adapters (default) or every weight.")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output-dir from its newest checkpoint.")] = False,
        amortization: Annotated[Optional[float], typer.Option("--amortization", help="Fraction of frames the depth decoder trains on (default 1/16; 1.0: all).")] = None,
        lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None,
        batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Samples per optimizer step (all processes).")] = None,
        grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = None,
        eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Steps between held-out losses.")] = None,
        save_every: Annotated[Optional[int], typer.Option("--save-every", help="Steps between checkpoints.")] = None,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the data order, the split and the initialization.")] = None,
        strict: Annotated[Optional[bool], typer.Option("--strict", help="Stop at the first bad data row instead of skipping it.")] = None,
        device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Pre-tokenized clips (default OUTPUT_DIR/pretokenized).")] = None,
    ) -> None:
        """Fine-tune CSM on DATA; writes OUTPUT_DIR/final (load it with `csmctl say -w OUTPUT_DIR/final`)."""
        if not sys.stderr.isatty():
            import os

            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from csm_core.config import load_settings

            settings = load_settings(config, {"models.preset": preset, "models.model_path": model_path, "device": device})
            options = build_options(settings, {
                "steps": steps, "lora": lora, "amortization": amortization, "lr": lr, "batch_size": batch_size,
                "grad_accum": grad_accum, "eval_every": eval_every, "save_every": save_every, "seed": seed,
                "strict": strict, "cache_dir": cache_dir,
            })
            if not data.exists():
                raise CsmError(f"DATA {str(data)!r} does not exist: give a manifest (.jsonl, .csv) or a folder of recordings")
            _check_output(output_dir, resume)
        except CsmError as exc:
            _fail(str(exc))
        try:
            from .run import train as run_training

            result = run_training(data, output_dir, settings, options, resume=resume, on_data=_print_data,
                                  report=lambda message: typer.echo(message, err=True))
        except CsmError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            from .checkpoint import latest_checkpoint

            latest = latest_checkpoint(output_dir)
            kept = f"kept checkpoint {latest}; continue with --resume" if latest else "no checkpoint was written yet"
            typer.secho(f"interrupted: {kept}", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if result.final is None:  # a non-main process under torchrun
            return
        first = result.losses[0] if result.losses else None
        last = result.losses[-1] if result.losses else None
        if first is not None:
            typer.echo(f"loss: {first:.4f} (step {result.start_step + 1}) -> {last:.4f} (step {result.steps})")
        if result.eval_losses:
            ordered = sorted(result.eval_losses.items())
            typer.echo(f"eval loss: {ordered[0][1]:.4f} (step {ordered[0][0]}) -> {ordered[-1][1]:.4f} (step {ordered[-1][0]})")
        typer.echo(f"wrote {result.final} (transformers layout): csmctl say -w {result.final} \"Hello.\"")
