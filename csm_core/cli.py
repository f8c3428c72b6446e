"""``csmctl``: the command line of csm-multi.

Start-up stays fast: this module imports no model runtime (torch, onnxruntime, tensorrt); the
commands that need one import it when they run. Check with
``python -X importtime -c "import csm_core.cli"``.

Bad input is refused before any model loads, in this order: the text, the settings (config file,
``CSM_*`` environment, flags), the output paths (:mod:`csm_core.output_paths`), the input audio. Every
refusal is one line ``error: ...`` on stderr and exit status 2, usage errors (an unknown flag, a value
of the wrong type) included. A file the user has is never changed by a command that fails: audio is
written atomically at the end (``--stream`` writes it in place, and puts the old file back when the
command fails). Ctrl-C exits with status 130 and one line that says what was kept.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from csm_core.errors import CsmError

app = typer.Typer(
    name="csmctl",
    help="Conversational speech with Sesame's CSM on interchangeable backends.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# -- options shared by `run` and `say` -------------------------------------------------------------
ModelPath = Annotated[Optional[Path], typer.Option("--model-path", "-w", help="CSM checkpoint directory.")]
ModelFlavor = Annotated[
    Optional[str], typer.Option("--model-flavor", "-f", help="Checkpoint layout: transformers, sesame, sesame-ckpt.")
]
Preset = Annotated[Optional[str], typer.Option("--preset", help="Random weights of a preset size: tiny, small, csm-1b.")]
MaxNewTokens = Annotated[
    Optional[int], typer.Option("--max-new-tokens", "-m", help="Frames of audio to generate at most (80 ms each).")
]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-t", help="Sampling temperature; 0 is greedy.")]
TopK = Annotated[Optional[int], typer.Option("--top-k", "-k", help="Sample among the k most likely codes.")]
TopP = Annotated[Optional[float], typer.Option("--top-p", "-p", help="Nucleus sampling mass.")]
Speaker = Annotated[Optional[int], typer.Option("--speaker", help="Speaker id of the voice.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for reproducible sampling.")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Backend = Annotated[Optional[str], typer.Option("--backend", "-b", help="Backend for every stage (see `csmctl doctor`).")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file.")]
Output = Annotated[str, typer.Option("--output", "-o", help="WAV file to write (its name ends in .wav).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what loads and runs.")]
Optimizers = Annotated[
    Optional[list[str]],
    typer.Option("--optimizer", "-O", help="Enable an optimizer by name (repeat for several; see `csmctl plugins`)."),
]


def _settings(config: Path | None = None, environ=None, **flags):
    """Settings from the config file, the ``CSM_*`` environment (``environ``, default ``os.environ``) and
    the flags ``say`` takes (unknown keyword arguments are ignored, so a command passes ``locals()``)."""
    from csm_core.config import load_settings

    overrides = {
        "models.model_path": flags.get("model_path"),
        "models.model_flavor": flags.get("model_flavor"),
        "models.preset": flags.get("preset"),
        "generation.max_new_frames": flags.get("max_new_tokens"),
        "generation.temperature": flags.get("temperature"),
        "generation.top_k": flags.get("top_k"),
        "generation.top_p": flags.get("top_p"),
        "generation.seed": flags.get("seed"),
        "speaker": flags.get("speaker"),
        "device": flags.get("device"),
        "backend": flags.get("backend"),
        "optimizers": flags.get("optimizer") or None,
    }
    return load_settings(config, overrides, environ=environ)


def _check_voice(settings) -> None:
    """The ``[voice]`` reference clip, checked from its header before any model loads (chat does the same)."""
    if settings.voice.audio is not None:
        from csm_core.audio_header import check_audio_file

        check_audio_file(settings.voice.audio, f"voice.audio {str(settings.voice.audio)!r}")


EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.secho(f"error: {_one_line(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _interrupted(kept: str) -> None:
    """Ctrl-C: one line on stderr saying what was kept, then exit status 130."""
    typer.secho(f"interrupted: {kept}", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(EXIT_INTERRUPTED)


@dataclass
class _SpeechFile:
    """The audio file a command writes: the ``path`` given, the ``target`` written (a link followed),
    and how many ``seconds`` of audio ``--stream`` put there so far."""

    path: str
    target: Path
    stream: bool = False
    seconds: float = 0.0

    def kept(self) -> str:
        """What an interrupted command leaves, for the ``interrupted:`` line."""
        if self.stream and self.seconds > 0:
            return f"kept {self.seconds:.2f} s of audio streamed to {self.path}"
        state = "left as it was" if self.target.exists() else "not created"
        return f"nothing written ({self.path} {state})"


def _logging(verbose: bool) -> None:
    if not verbose:  # our own progress display is enough: quiet the libraries' bars and advisories
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _speech_progress():
    """A transient progress display on stderr: seconds of audio generated so far. Off where stderr is no
    terminal (a pipe, a log file), which then gets only the result or the one ``error:`` line."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:.2f} s of audio"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _write_speech(pipeline, output: _SpeechFile, produce):
    """Run ``produce(on_audio)`` and write the audio to ``output``.

    Without ``--stream`` the file is written once, atomically, when the audio is complete. With it the
    WAV grows on disk as chunks arrive; if the command then fails, the file is put back as it was (or
    removed), while Ctrl-C keeps what was streamed (if anything was; else it too puts the file back).
    The tts stage is asked for its sample rate only when the first chunk arrives, so a progressive
    preload can still be loading it while the earlier stages of the turn run.
    """
    from contextlib import nullcontext

    from csm_core.audio import WavStreamWriter, write_wav
    from csm_core.files import restored_on_failure

    def keep(exc: BaseException) -> bool:  # Ctrl-C keeps the audio streamed so far; no audio: the old file
        return isinstance(exc, KeyboardInterrupt) and output.seconds > 0

    guard = restored_on_failure(output.target, keep=keep) if output.stream else nullcontext()
    with _speech_progress() as progress, guard:
        task = progress.add_task("generating speech", total=None)
        writer: list = []

        def on_audio(samples):
            sample_rate = pipeline.stage("tts").sample_rate
            progress.advance(task, len(samples) / sample_rate)
            if output.stream:
                try:
                    if not writer:
                        writer.append(WavStreamWriter(output.target, sample_rate))
                    writer[0].write(samples)
                except (OSError, RuntimeError) as exc:  # libsndfile's errors are RuntimeErrors
                    raise CsmError(
                        f"cannot write {output.path!r} while streaming ({exc}): is the disk full? "
                        "It was put back as it was"
                    ) from None
                output.seconds += len(samples) / sample_rate

        try:
            turn = produce(on_audio)
        finally:
            if writer:
                writer[0].close()
        if not output.stream or not writer:
            write_wav(output.target, turn.audio)
    return turn


def _print_turn(turn, output: Path, as_json: bool) -> None:
    data = turn.to_dict()
    data["output"] = str(output)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    for key in ("transcript", "emotion", "reply"):
        if data.get(key) is not None:
            typer.echo(f"{key}: {data[key]}")
    if data["sentiment"] is not None:
        sentiment = data["sentiment"]
        label = sentiment.get("label") if isinstance(sentiment, dict) else sentiment
        typer.echo(f"sentiment: {label}")
    if data["params"]:
        typer.echo("params: " + ", ".join(f"{k}={v}" for k, v in data["params"].items()))
    metrics = data["metrics"]
    for timing in metrics["stages"]:
        typer.echo(f"  {timing['stage']:<12} {timing['implementation']:<14} {timing['seconds']:.3f} s")
    if metrics.get("startup_seconds") is not None:
        typer.echo(f"start-up (models loaded): {metrics['startup_seconds']:.3f} s")
    if metrics["time_to_first_audio_s"] is not None:
        typer.echo(f"time to first audio: {metrics['time_to_first_audio_s']:.3f} s")
    if metrics["real_time_factor"] is not None:
        typer.echo(f"real-time factor: {metrics['real_time_factor']:.3f}")
    for event in metrics["events"]:
        typer.echo(f"note: {event}")
    typer.echo(f"wrote {output} ({data['audio_seconds']:.2f} s)")


@app.command()
def plugins(
    as_json: JsonOut = False,
    show_tracebacks: Annotated[bool, typer.Option("--tracebacks", help="Show load failures' tracebacks.")] = False,
) -> None:
    """List installed plugins, what each registered, and plugins that failed to load."""
    from csm_core.plugin_report import plugin_report, render_plugin_report
    from csm_core.plugins import Plugins

    report = plugin_report(Plugins.from_environment())
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_plugin_report(report, show_tracebacks)
    if report["conflicts"]:
        raise typer.Exit(1)


@app.command()
def doctor(
    backend: Annotated[Optional[str], typer.Option(
        "--backend", "-b", help="Also show which stages of a turn would run on this backend, and why not.")] = None,
    config: ConfigFile = None,
    as_json: JsonOut = False,
) -> None:
    """Check runtimes, CUDA and, for every backend, whether it can run here and why not."""
    from csm_core.doctor import backend_checks, runtime_checks
    from csm_core.plugins import Plugins
    from csm_core.registry import Registry

    registry = Registry.collect(Plugins.from_environment(), strict=False)
    checks = runtime_checks() + backend_checks(registry)
    rows = _coverage(registry, backend, config) if backend is not None else None
    if as_json:
        document = [vars(check) for check in checks]
        typer.echo(json.dumps(document if rows is None else {"checks": document, "stages": rows}, indent=2))
        return
    for check in checks:
        mark = typer.style("ok  ", fg=typer.colors.GREEN) if check.ok else typer.style("no  ", fg=typer.colors.YELLOW)
        typer.echo(f"{mark}{check.name:<24} {check.detail}")
    if not registry.backends:
        typer.echo("no backend is registered: install csm-multi[torch] or a backend plugin")
    if rows is not None:
        typer.echo(f"\nstages of a turn on backend {backend!r}:")
        for row in rows:
            mark = {"runs": typer.style("ok  ", fg=typer.colors.GREEN), "own runtime": "--  "}.get(
                row["status"], typer.style("no  ", fg=typer.colors.YELLOW))
            typer.echo(f"{mark}{row['stage']:<12} {row['implementation']:<14} {row['status']:<20} {row['reason'] or ''}")


def _coverage(registry, backend: str, config: Path | None) -> list[dict]:
    """The rows of ``doctor --backend``: every stage of an audio turn, as configured, on ``backend``."""
    from csm_core.backend_coverage import stage_coverage
    from csm_core.pipeline import AUDIO_STAGES

    try:
        return [row.to_dict() for row in stage_coverage(registry, _settings(config), AUDIO_STAGES, backend=backend)]
    except CsmError as exc:
        _fail(str(exc))


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="What to say.")],
    output: Output = "out.wav",
    stream: Annotated[bool, typer.Option("--stream", help="Write audio to the file as it is generated.")] = False,
    model_path: ModelPath = None,
    model_flavor: ModelFlavor = None,
    preset: Preset = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    speaker: Speaker = None,
    seed: Seed = None,
    device: Device = None,
    backend: Backend = None,
    optimizer: Optimizers = None,
    config: ConfigFile = None,
    as_json: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Speak TEXT with CSM and write it to a WAV file."""
    _logging(verbose)
    out = None
    try:
        from csm_core.output_paths import check_audio_output
        from csm_core.user_text import check_text

        check_text(text, "TEXT (the text to say)")
        settings = _settings(**locals())
        out = _SpeechFile(output, check_audio_output(output, reads={"voice.audio": settings.voice.audio}), stream)
        _check_voice(settings)

        from csm_core.pipeline import Pipeline

        with Pipeline(settings) as pipeline:
            pipeline.preload(["tts"])
            turn = _write_speech(pipeline, out, lambda on_audio: pipeline.speak(text, on_audio))
    except CsmError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted(out.kept() if out is not None else "nothing written")
    _print_turn(turn, output, as_json)


@app.command()
def run(
    input: Annotated[Optional[Path], typer.Argument(help="The user's speech (WAV, FLAC, any rate).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="The user's words as text, instead of audio.")] = None,
    output: Output = "reply.wav",
    stream: Annotated[bool, typer.Option("--stream", help="Write the reply as it is generated.")] = False,
    model_path: ModelPath = None,
    model_flavor: ModelFlavor = None,
    preset: Preset = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    speaker: Speaker = None,
    seed: Seed = None,
    device: Device = None,
    backend: Backend = None,
    optimizer: Optimizers = None,
    config: ConfigFile = None,
    as_json: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """One conversation turn: hear INPUT (or --text), reply with an emotion, speak the reply."""
    _logging(verbose)
    if (input is None) == (text is None):
        _fail("give the user's speech as INPUT or their words with --text (one of the two)")
    out = None
    try:
        from csm_core.output_paths import check_audio_output
        from csm_core.user_text import check_text

        if text is not None:
            check_text(text, "--text")
        settings = _settings(**locals())
        reads = {"INPUT": input, "voice.audio": settings.voice.audio}
        out = _SpeechFile(output, check_audio_output(output, reads=reads), stream)
        _check_voice(settings)

        from csm_core.audio import read_audio
        from csm_core.pipeline import AUDIO_STAGES, TEXT_STAGES, Pipeline

        audio = read_audio(input) if input is not None else None
        with Pipeline(settings) as pipeline:
            pipeline.preload(AUDIO_STAGES if audio is not None else TEXT_STAGES)
            turn = _write_speech(
                pipeline, out, lambda on_audio: pipeline.turn(audio=audio, text=text, on_audio=on_audio)
            )
    except CsmError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted(out.kept() if out is not None else "nothing written")
    _print_turn(turn, output, as_json)


@app.command()
def chat(
    input: Annotated[Optional[Path], typer.Argument(help="The user's speech (WAV, FLAC, any rate).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="The user's words as text, instead of audio.")] = None,
    state: Annotated[
        Path, typer.Option("--state", "-s", help="The conversation's state file (created on the first turn).")
    ] = Path("chat.json"),
    output: Output = "reply.wav",
    model_path: ModelPath = None,
    model_flavor: ModelFlavor = None,
    preset: Preset = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    speaker: Speaker = None,
    seed: Seed = None,
    device: Device = None,
    backend: Backend = None,
    optimizer: Optimizers = None,
    config: ConfigFile = None,
    as_json: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """One turn of a conversation kept in a state file: each turn adds to the next one's context."""
    _logging(verbose)
    if (input is None) == (text is None):
        _fail("give the user's speech as INPUT or their words with --text (one of the two)")
    try:
        from csm_core.output_paths import check_audio_output, check_writable_folder
        from csm_core.user_text import check_text

        if text is not None:
            check_text(text, "--text")
        settings = _settings(**locals())
        reads = {"INPUT": input, "--state": state, "voice.audio": settings.voice.audio}
        target = check_audio_output(output, reads=reads)
        if state.parent.is_dir():  # saved by a rename in its folder; the rest of --state is chat_turn's to check
            check_writable_folder(state.parent, f"--state {str(state)!r}")

        from csm_core.audio import MIMI_SAMPLE_RATE, read_audio
        from csm_core.chat import chat_turn

        audio = read_audio(input) if input is not None else None
        with _speech_progress() as progress:
            task = progress.add_task("listening and replying", total=None)
            done = chat_turn(state, settings, audio=audio, text=text, output=target,  # the reply, then the state
                             on_audio=lambda samples: progress.advance(task, len(samples) / MIMI_SAMPLE_RATE))
    except CsmError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted(f"nothing written ({output} and {state} left as they were)")
    _print_turn(done.turn, output, as_json)
    if not as_json:
        verb = "started" if done.created else "updated"
        typer.echo(f"{verb} {state} (turn {done.conversation.turns}, {len(done.conversation.segments)} segments)")


@app.command()
def export(
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend whose artifacts to build.")] = "onnxruntime",
    model_path: ModelPath = None,
    model_flavor: ModelFlavor = None,
    preset: Preset = None,
    device: Device = None,
    config: ConfigFile = None,
    verbose: Verbose = False,
) -> None:
    """Build a backend's artifacts ahead of time (ONNX graphs, TensorRT engines) into the cache."""
    _logging(verbose)
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from csm_core.output_paths import check_output_folder
        from csm_core.plugins import Plugins
        from csm_core.records import StageContext
        from csm_core.registry import Registry

        settings = _settings(**locals())
        cache = check_output_folder(settings.resolved_cache_dir(), "the cache folder (cache_dir)")
        registry = Registry.collect(Plugins.from_environment())
        record = registry.backend(backend)
        if record.prepare is None:
            _fail(f"backend {backend!r} has nothing to build ahead of time: it runs the PyTorch modules as they are")
        record.check()
        context = StageContext(stage="tts", settings=settings, registry=registry, backend=record,
                               log=logging.getLogger(f"csm.export.{backend}"))
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True)) as progress:
            task = progress.add_task(f"exporting for {backend}", total=None)

            def report(description: str, completed: int, total: int) -> None:
                progress.update(task, description=description, completed=completed, total=total)

            paths = record.prepare(context, report)
    except CsmError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted(f"the artifacts finished so far are kept in {cache} (each is whole); export again for the rest")
    for event in context.events:
        typer.echo(f"note: {event}")
    for path in paths:
        typer.echo(f"wrote {path}")


def main() -> None:
    """Run ``csmctl``; usage errors (an unknown flag, a value of the wrong type, a missing argument) are
    one ``error:`` line and exit status 2, like every other refusal."""
    from csm_core.plugin_commands import add_plugin_commands

    for failure in add_plugin_commands(app):
        typer.secho(f"warning: plugin {failure.plugin!r} could not add its commands: {failure.error}",
                    fg=typer.colors.YELLOW, err=True)
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's exceptions, as typer ships them
        if any(cls.__name__ == "NoArgsIsHelpError" for cls in type(exc).__mro__):  # `csmctl say` alone: the help
            exc.show()
        else:
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "csmctl"
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            typer.secho(f"error: {_one_line(message)} (see `{command} --help`)", fg=typer.colors.RED, err=True)
        code = getattr(exc, "exit_code", EXIT_BAD_INPUT)
    except typer.Abort:  # end of input at a prompt
        typer.echo("interrupted: nothing written", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
