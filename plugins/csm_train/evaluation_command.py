"""``csmctl eval PROMPTS --out DIR``: evaluate a checkpoint (or preset) on a prompt set; see docs/eval.md.

Imports nothing heavy at ``csmctl`` start: the pipeline and the metrics load when the command runs.
Bad input (the prompt file, a line of it, the flags, ``--out``, ``--compare``) is one ``error:`` line and
exit status 2, before any model loads.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from csm_core.cli import EXIT_INTERRUPTED, _fail  # the CLI's one error: line and exit statuses
from csm_core.errors import CsmError

__all__ = ["add_eval_command"]


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=False)


def add_eval_command(cli: typer.Typer) -> None:
    """Add ``eval`` to ``cli``."""

    @cli.command("eval")
    def eval_(
        prompts_file: Annotated[Path, typer.Argument(metavar="PROMPTS", help="JSONL, one prompt a line: text, optional voice + voice_text, emotion, reference.")],
        out: Annotated[Path, typer.Option("--out", help="Folder for eval.json, eval.md and eval.png.")],
        model_path: Annotated[Optional[Path], typer.Option("--model-path", "-w", help="CSM checkpoint directory to evaluate.")] = None,
        preset: Annotated[Optional[str], typer.Option("--preset", help="Random weights of a preset size: tiny, small, csm-1b.")] = None,
        compare: Annotated[Optional[str], typer.Option("--compare", help="Second run: a checkpoint folder, preset:NAME, or optimizers:NAME[,NAME] (optimizers:none for none).")] = None,
        backend: Annotated[Optional[str], typer.Option("--backend", "-b", help="Backend for every stage.")] = None,
        optimizer: Annotated[Optional[list[str]], typer.Option("--optimizer", "-O", help="Enable an optimizer (repeatable).")] = None,
        device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file.")] = None,
        max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", "-m", help="Frames of audio per prompt at most (80 ms each).")] = None,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for reproducible sampling.")] = None,
    ) -> None:
        """Speak every prompt of PROMPTS and measure speed, intelligibility, voice, prosody, emotion and length."""
        import os

        if not sys.stderr.isatty():
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from csm_core.config import load_settings
            from csm_core.output_paths import check_output_folder

            from .evaluation import load_prompts
            from .evaluation_run import RunSpec, compare_spec

            overrides = {
                "models.model_path": model_path, "models.preset": preset, "backend": backend,
                "optimizers": optimizer or None, "device": device, "generation.max_new_frames": max_new_tokens,
                "generation.seed": seed,
            }
            overrides = {k: v for k, v in overrides.items() if v is not None}
            settings = load_settings(config, overrides)
            prompts, notes = load_prompts(prompts_file, settings.emotions)
            _check_clips(prompts)
            check_output_folder(out, "--out")
            models = settings.models
            base_label = (f"checkpoint {models.model_path.name}" if models.model_path else
                          f"preset {models.preset}" if models.preset else f"model {models.model_dir or models.repo_id}")
            if settings.optimizers:
                base_label += f" +{'+'.join(settings.optimizers)}"
            runs = [RunSpec(base_label, overrides)]
            if compare is not None:
                second = compare_spec(compare, runs[0])
                if second.label == base_label:
                    second = RunSpec(f"{second.label} (2nd run)", second.overrides)
                runs.append(second)
            _check_optimizers([load_settings(config, spec.overrides) for spec in runs])  # before any model loads
        except CsmError as exc:
            _fail(str(exc))
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        try:
            from .evaluation_run import comparison, evaluate, write_reports

            document = {"prompts_file": str(prompts_file), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "prompts": len(prompts), "runs": [], "comparison": None}
            bar = _progress()  # started when the first pipeline has loaded: a load error leaves no empty bar
            tasks = {}

            def progress(label: str, done: int, total: int) -> None:
                if not tasks:
                    bar.start()
                if label not in tasks:
                    tasks[label] = bar.add_task(f"eval {label}", total=total)
                bar.update(tasks[label], completed=done)

            try:
                for spec in runs:
                    document["runs"].append(evaluate(spec, prompts, config, progress))
            finally:
                if tasks:
                    bar.stop()
            if len(document["runs"]) == 2:
                document["comparison"] = comparison(*document["runs"])
            written = write_reports(document, out)
        except CsmError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            typer.secho(f"interrupted: nothing written to {out}", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        for run in document["runs"]:
            o = run["overall"]
            typer.echo(f"{run['label']}: WER {o['intelligibility']['wer']:.3f}, CER {o['intelligibility']['cer']:.3f}, "
                       f"RTF {_f(o['speed']['real_time_factor'])}, {o['length']['total_frames']} frames")
        typer.echo("wrote " + ", ".join(str(p) for p in written))


def _check_clips(prompts) -> None:
    """Every ``voice`` and ``reference`` clip reads as audio (before any model loads)."""
    from csm_core.audio import read_audio

    for prompt in prompts:
        for name in ("voice", "reference"):
            path = getattr(prompt, name)
            if path is not None:
                read_audio(path, what=f"prompt line {prompt.line}: {name}")


def _check_optimizers(settings_list) -> None:
    """Every optimizer name of every run is registered (the pipeline would find out only when it starts)."""
    from csm_core.plugins import Plugins
    from csm_core.registry import Registry

    registry = Registry.collect(Plugins.from_environment())
    for settings in settings_list:
        for name in settings.optimizers:
            registry.optimizer(name)


def _f(value) -> str:
    return "–" if value is None else f"{value:.3f}"
