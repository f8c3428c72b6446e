"""Tests of each hookspec, each through the path the core really uses.

``tests/test_meta.py`` checks that every hookspec has a test here whose name starts with
``test_hook_<name>`` (as datasette's tests do).
"""

from __future__ import annotations

import numpy as np
import pytest
import typer

from csm_core import hookimpl
from csm_core.audio import Audio
from csm_core.config import Settings
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins
from csm_core.records import Backend, Optimizer, StageImpl
from csm_core.registry import Registry
from csm_core.stages import Reply, SpeechChunk


def registry_with(plugin) -> Registry:
    plugins = Plugins()
    plugins.register(plugin, name="under-test")
    return Registry.collect(plugins)


def made_by(kind: str, hook: str):
    """A plugin implementing ``hook`` that registers one StageImpl named 'x' building ``kind``."""
    def method(self, register):
        register(StageImpl(name="x", factory=lambda context: kind, description=f"a {kind}"))

    method.__name__ = hook
    return type("Plugin", (), {hook: hookimpl(method)})()


def assert_registers_only_under(hook: str, kind: str) -> None:
    """A StageImpl registered through ``hook`` is found under ``kind`` and under no other stage kind."""
    registry = registry_with(made_by(kind, hook))
    assert registry.stage(kind, "x").factory(None) == kind
    others = [k for k in registry.stages if k != kind]
    assert all(registry.stages[k] == {} for k in others)


def test_hook_register_backends():
    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register(Backend(name="numpy", engines={"codec": lambda m, c: m}, check=lambda: None))

    registry = registry_with(Plugin())
    backend = registry.backend("numpy")
    assert backend.supports("codec") and not backend.supports("csm")
    assert registry.backends["numpy"].plugin == "under-test"


def test_hook_register_tokenizers_registers_a_tokenizer_stage():
    assert_registers_only_under("register_tokenizers", "tokenizer")


def test_hook_register_transcribers_registers_a_transcriber_stage():
    assert_registers_only_under("register_transcribers", "transcriber")


def test_hook_register_sentiment_analyzers_registers_a_sentiment_stage():
    assert_registers_only_under("register_sentiment_analyzers", "sentiment")


def test_hook_register_llms_registers_an_llm_stage():
    assert_registers_only_under("register_llms", "llm")


def test_hook_register_tts_registers_a_tts_stage():
    assert_registers_only_under("register_tts", "tts")


def test_hook_register_optimizers():
    class Plugin:
        @hookimpl
        def register_optimizers(self, register):
            register(Optimizer(name="noop", factory=lambda ctx: object(), effect="exact"))

    assert registry_with(Plugin()).optimizer("noop").effect == "exact"
    with pytest.raises(ValueError, match="effect must be"):
        Optimizer(name="bad", factory=lambda ctx: None, effect="sometimes")


def test_hook_run_stage():
    """A wrapper sees each stage's name, the turn so far, and can replace the result."""
    seen = []

    class Tts:
        sample_rate = 24000

        def speak(self, request):
            yield SpeechChunk(np.zeros(1920, dtype=np.float32), np.zeros((32, 1), dtype=np.int64))

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register(Backend(name="numpy", engines={}, check=lambda: None))

        @hookimpl
        def register_llms(self, register):
            register(StageImpl("transformers", lambda ctx: type("L", (), {
                "reply": lambda s, r: Reply(text="plain", emotion="calm")})()))

        @hookimpl
        def register_tts(self, register):
            register(StageImpl("csm", lambda ctx: Tts()))

        @hookimpl(wrapper=True)
        def run_stage(self, stage, call, turn):
            seen.append((stage, turn.transcript))
            result = yield
            if stage == "llm":
                return Reply(text=result.text.upper(), emotion=result.emotion)
            return result

    plugins = Plugins()
    plugins.register(Plugin(), name="under-test")
    with Pipeline(Settings(backend="numpy"), plugins) as pipeline:
        turn = pipeline.turn(text="hi")
    assert seen == [("llm", "hi"), ("tts", "hi")]
    assert turn.reply.text == "PLAIN"
    assert isinstance(turn.audio, Audio)


def test_hook_run_stage_first_result_replaces_the_work_and_none_leaves_it():
    """``firstresult``: a plain implementation's non-None result is the stage's result and the stage's
    work does not run; None hands the stage on to the core, which runs it."""
    replied = []

    class Llm:
        def reply(self, request):
            replied.append(request.transcript)
            return Reply(text="from the model", emotion="calm")

    class Plugin(_NumpyTtsPlugin):
        @hookimpl
        def register_llms(self, register):
            register(StageImpl("transformers", lambda ctx: Llm()))

    class Canned:
        @hookimpl
        def run_stage(self, stage, call, turn):
            return Reply(text="canned", emotion="happy") if stage == "llm" else None

    plugins = Plugins()
    plugins.register(Plugin(), name="under-test")
    with Pipeline(Settings(backend="numpy"), plugins) as pipeline:
        assert pipeline.turn(text="hi").reply.text == "from the model"
        plugins.register(Canned(), name="canned")
        turn = pipeline.turn(text="hi again")
    assert replied == ["hi"] and turn.reply.text == "canned"
    assert len(turn.audio.samples) == 3 * 1920  # the tts stage still ran: Canned returned None for it


class _ChunkTts:
    """A TTS stage that speaks ``frames`` silent frames and reaches a safe point after each."""

    sample_rate = 24000

    def __init__(self, context, frames: int = 3):
        self.context, self.frames = context, frames

    def speak(self, request):
        for _ in range(self.frames):
            yield SpeechChunk(np.zeros(1920, dtype=np.float32), np.zeros((32, 1), dtype=np.int64))
            self.context.safe_point("cpu")


class _NumpyTtsPlugin:
    @hookimpl
    def register_backends(self, register):
        register(Backend(name="numpy", engines={}, check=lambda: None))

    @hookimpl
    def register_tts(self, register):
        register(StageImpl("csm", lambda ctx: _ChunkTts(ctx)))


def test_hook_register_commands():
    """A plugin's command runs through csmctl's app; a plugin that raises or takes a used name loses only
    its own commands, and the others still arrive."""
    import typer
    from typer.testing import CliRunner

    from csm_core.plugin_commands import add_plugin_commands

    class Hello:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello(name: str) -> None:
                """Say hello."""
                typer.echo(f"hello {name}")

    class Broken:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("half-made")
            def half_made() -> None:
                """Never reachable: the plugin raises after adding it."""

            raise RuntimeError("no database")

    class Clash:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("say")
            def say() -> None:
                """Would shadow the core's say."""

    class Unreadable:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def odd(value: "NoSuchType") -> None:  # noqa: F821 - typer cannot resolve the annotation
                """Typer fails on this signature."""

    app = typer.Typer()

    @app.command()
    def say() -> None:
        """The core's command."""
        typer.echo("core say")

    plugins = Plugins()
    for name, plugin in (("hello", Hello()), ("broken", Broken()), ("clash", Clash()), ("odd", Unreadable())):
        plugins.register(plugin, name=name)
    failures = {f.plugin: f.error for f in add_plugin_commands(app, plugins)}
    assert failures.keys() == {"broken", "clash", "odd"}
    assert failures["broken"] == "RuntimeError: no database" and "'say' already exists" in failures["clash"]
    assert sorted(c.name or c.callback.__name__ for c in app.registered_commands) == ["hello", "say"]
    runner = CliRunner()
    assert runner.invoke(app, ["hello", "world"]).output == "hello world\n"
    assert runner.invoke(app, ["say"]).output == "core say\n"


def test_hook_register_commands_adds_subcommands_to_a_group_and_rolls_them_back_on_failure():
    from typer.testing import CliRunner

    from csm_core.plugin_commands import add_plugin_commands, command_group

    class Sub:
        @hookimpl
        def register_commands(self, cli):
            @command_group(cli, "bench").command("serve")
            def serve() -> None:
                """A subcommand."""
                typer.echo("bench serve ran")

    class Matrix:
        @hookimpl
        def register_commands(self, cli):
            @command_group(cli, "bench").callback(invoke_without_command=True)
            def matrix(ctx: typer.Context) -> None:
                """The group's own command."""
                if ctx.invoked_subcommand is None:
                    typer.echo("matrix ran")

    class BrokenSub:
        @hookimpl
        def register_commands(self, cli):
            @command_group(cli, "bench").command("half")
            def half() -> None:
                """Rolled back: the plugin raises after adding it."""

            command_group(cli, "made").command("too")(half)  # a group it made: rolled back too
            raise RuntimeError("no database")

    class SecondCallback:
        @hookimpl
        def register_commands(self, cli):
            @command_group(cli, "bench").callback()
            def other(ctx: typer.Context) -> None:
                """Would replace the matrix."""

    for order in ((Sub, Matrix), (Matrix, Sub)):  # whichever plugin comes first makes the group
        app = typer.Typer()

        @app.command()
        def other() -> None:
            """Another core command."""

        plugins = Plugins()
        for plugin in (*order, BrokenSub, SecondCallback):
            plugins.register(plugin(), name=plugin.__name__)
        failures = {f.plugin: f.error for f in add_plugin_commands(app, plugins)}
        assert failures == {"BrokenSub": "RuntimeError: no database",
                            "SecondCallback": "ValueError: command group 'bench' already has a callback"}
        [group] = app.registered_groups
        assert group.name == "bench" and [c.name for c in group.typer_instance.registered_commands] == ["serve"]
        runner = CliRunner()
        assert runner.invoke(app, ["bench", "serve"]).output == "bench serve ran\n"
        assert runner.invoke(app, ["bench"]).output == "matrix ran\n"


def test_hook_at_safe_point():
    """An optimizer's ``at_safe_point`` runs once per frame the stage reports, with its device."""
    calls = []

    class Counter:
        @hookimpl
        def at_safe_point(self, stage, device):
            calls.append((stage, device))

    class Plugin(_NumpyTtsPlugin):
        @hookimpl
        def register_optimizers(self, register):
            register(Optimizer(name="counter", factory=lambda ctx: Counter()))

    plugins = Plugins()
    plugins.register(Plugin(), name="under-test")
    with Pipeline(Settings(backend="numpy", optimizers=["counter"]), plugins) as pipeline:
        pipeline.speak("hello")
    assert calls == [("tts", "cpu")] * 3
    # Closing the pipeline unregistered the optimizer: its hook no longer runs.
    with Pipeline(Settings(backend="numpy"), plugins) as pipeline:
        pipeline.speak("hello")
    assert len(calls) == 3


def test_optimizer_configure_overrides_settings_before_stages_load():
    seen = {}

    class Greedy:
        def configure(self, settings):
            return {"generation.top_k": 3, "options.prosody.amortize": True}

    class Plugin(_NumpyTtsPlugin):
        @hookimpl
        def register_optimizers(self, register):
            register(Optimizer(name="greedy", factory=lambda ctx: Greedy()))

        @hookimpl
        def register_tts(self, register):
            def build(ctx):
                seen["top_k"] = ctx.settings.generation.top_k
                seen["options"] = ctx.settings.options
                return _ChunkTts(ctx)

            register(StageImpl("csm", build))

    plugins = Plugins()
    plugins.register(Plugin(), name="under-test")
    with Pipeline(Settings(backend="numpy", optimizers=["greedy"]), plugins) as pipeline:
        turn = pipeline.speak("hello")
    assert seen == {"top_k": 3, "options": {"prosody": {"amortize": True}}}
    assert "optimizer greedy set generation.top_k = 3" in turn.metrics.events


def test_optimizer_configure_with_an_invalid_value_names_the_optimizer():
    from csm_core.errors import ConfigError

    class Bad:
        def configure(self, settings):
            return {"generation.top_k": 0}

    class Plugin(_NumpyTtsPlugin):
        @hookimpl
        def register_optimizers(self, register):
            register(Optimizer(name="bad", factory=lambda ctx: Bad()))

    plugins = Plugins()
    plugins.register(Plugin(), name="under-test")
    with pytest.raises(ConfigError, match=r"(?s)optimizer .bad.*generation.top_k"):
        Pipeline(Settings(backend="numpy", optimizers=["bad"]), plugins)


def test_hook_engine_built():
    """Every engine a backend builds passes through ``engine_built`` (with its stage and component) before
    the stage uses it; an optimizer adjusts it there, or refuses it with a CsmError that fails the stage."""
    from csm_core.errors import CsmError

    seen = []

    class Engine:
        frame_decoder = None

    class Installer:
        @hookimpl
        def engine_built(self, stage, component, engine, context):
            seen.append((stage, component, type(engine).__name__, context.backend.name))
            engine.frame_decoder = "installed"

    class Refuser:
        @hookimpl
        def engine_built(self, stage, component, engine, context):
            raise CsmError(f"refused the {component} engine of {context.backend.name}")

    class Stage(_ChunkTts):
        def __init__(self, ctx):
            super().__init__(ctx)
            self.engine = ctx.engine("thing", "module")

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register(Backend(name="numpy", engines={"thing": lambda module, ctx: Engine()}, check=lambda: None))

        @hookimpl
        def register_tts(self, register):
            register(StageImpl("x", Stage, components=("thing",)))

        @hookimpl
        def register_optimizers(self, register):
            register(Optimizer(name="installer", factory=lambda ctx: Installer()))
            register(Optimizer(name="refuser", factory=lambda ctx: Refuser()))

    plugins = Plugins()
    plugins.register(Plugin(), name="under-test")
    with Pipeline(Settings(backend="numpy", stages={"tts": "x"}, optimizers=["installer"]), plugins) as pipeline:
        assert pipeline.stage("tts").engine.frame_decoder == "installed"
    assert seen == [("tts", "thing", "Engine", "numpy")]
    with Pipeline(Settings(backend="numpy", stages={"tts": "x"}), plugins) as pipeline:
        assert pipeline.stage("tts").engine.frame_decoder is None  # no optimizer, no hook
    with Pipeline(Settings(backend="numpy", stages={"tts": "x"}, optimizers=["refuser"]), plugins) as pipeline:
        with pytest.raises(CsmError, match="refused the thing engine of numpy"):
            pipeline.stage("tts")
