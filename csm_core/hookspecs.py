"""The hooks a csm-multi plugin can implement.

Every ``register_*`` hook hands the plugin a ``register`` callback; the plugin calls it once per thing
it provides, with a typed record from :mod:`csm_core.records`. What runs is then chosen *by name* from
the config, never by the order in which plugins were called::

    from csm_core import hookimpl
    from csm_core.records import StageImpl

    @hookimpl
    def register_sentiment_analyzers(register):
        register(StageImpl(name="my-sentiment", factory=MySentiment, description="..."))

``run_stage`` is the one hook that is *called around work*: wrapper implementations
(``@hookimpl(wrapper=True)``) act before and after every stage of a turn.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

PROJECT = "csm_multi"

hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)


@hookspec
def register_backends(register):
    """Register runtimes that turn model components into engines.

    Call ``register(Backend(name=..., engines={...}, check=...))`` for each backend. ``engines`` maps a
    component kind (``"csm"``, ``"codec"``, see :mod:`csm_core.components`) to a factory that builds
    that component's engine from its PyTorch module; ``check`` raises
    :class:`csm_core.errors.BackendUnavailable` saying what is missing when the backend cannot run here.
    """


@hookspec
def register_tokenizers(register):
    """Register audio tokenizers (speech -> codes -> speech), e.g. Mimi.

    Call ``register(StageImpl(name=..., factory=...))``. The factory receives a
    :class:`csm_core.records.StageContext` and returns an object with ``encode(audio) -> codes [K, F]``
    and ``decode(codes) -> audio`` (see :class:`csm_core.stages.Tokenizer`).
    """


@hookspec
def register_transcribers(register):
    """Register speech recognizers.

    Call ``register(StageImpl(name=..., factory=...))``; the factory's object has
    ``transcribe(audio) -> str`` (see :class:`csm_core.stages.Transcriber`).
    """


@hookspec
def register_sentiment_analyzers(register):
    """Register analyzers of how the user spoke.

    Call ``register(StageImpl(name=..., factory=...))``; the factory's object has
    ``analyze(audio, codes) -> Sentiment`` (see :class:`csm_core.stages.SentimentAnalyzer`).
    """


@hookspec
def register_llms(register):
    """Register language models that write the reply and choose its emotion.

    Call ``register(StageImpl(name=..., factory=...))``; the factory's object has
    ``reply(request) -> Reply`` (see :class:`csm_core.stages.ReplyModel`).
    """


@hookspec
def register_tts(register):
    """Register text-to-speech stages, e.g. CSM.

    Call ``register(StageImpl(name=..., factory=...))``; the factory's object has
    ``speak(request) -> Iterator[np.ndarray]``, yielding mono float32 chunks at its ``sample_rate``
    as they are generated (see :class:`csm_core.stages.Speaker`).
    """


@hookspec
def register_optimizers(register):
    """Register optimizations that change *how* a turn is computed, not *what*.

    Call ``register(Optimizer(name=..., factory=..., effect="exact" | "approximate"))``. When the config
    enables it, the factory's object is registered for the pipeline's lifetime as a plugin of its own,
    so it can implement ``run_stage`` as a wrapper and act around stages.
    """


@hookspec
def register_commands(cli):
    """Add commands to ``csmctl``.

    ``cli`` is the :class:`typer.Typer` application: decorate functions with ``@cli.command()`` (or
    ``cli.add_typer(...)`` a group). Called once at every ``csmctl`` start, so the implementing module
    must import nothing heavy; import torch and the like inside the command. A name that is already a
    command, or an implementation that raises, costs only that plugin's commands (see
    :mod:`csm_core.plugin_commands`).
    """


@hookspec
def at_safe_point(stage, device):
    """A stage reached a point where no intermediate tensor of its work is alive (between two frames).

    ``stage`` is the stage kind, ``device`` the torch device string its models run on (``"cpu"``,
    ``"cuda:0"``). Stages that generate call it through ``StageContext.safe_point(device)`` after each
    unit of work; optimizers implement it to release cached memory there. It must not change any
    result and should be cheap: it runs once per generated frame.
    """


@hookspec(firstresult=True)
def run_stage(stage, call, turn):
    """Run one stage of a conversation turn and return its result.

    ``stage`` is the stage kind (``"tokenizer"``, ``"transcriber"``, ``"sentiment"``, ``"llm"``,
    ``"tts"``), ``call`` a zero-argument callable that does the stage's work, ``turn`` the
    :class:`csm_core.pipeline.TurnState` being built. The core's implementation returns ``call()``.
    Implement it with ``@hookimpl(wrapper=True)`` to act around every stage::

        @hookimpl(wrapper=True)
        def run_stage(stage, call, turn):
            started = time.perf_counter()
            result = yield
            print(stage, time.perf_counter() - started)
            return result
    """
