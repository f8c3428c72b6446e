"""The hooks a csm-multi plugin can implement.

Every ``register_*`` hook hands the plugin a ``register`` callback; the plugin calls it once per thing
it provides, with a typed record from :mod:`csm_core.records`. What runs is then chosen *by name* from
the config, never by the order in which plugins were called::

    from csm_core import hookimpl
    from csm_core.records import StageImpl

    @hookimpl
    def register_sentiment_analyzers(register):
        register(StageImpl(name="my-sentiment", factory=MySentiment, description="..."))

The ``register_*`` hooks are called by :meth:`csm_core.registry.Registry.collect`, one plugin at a
time, so that a name two plugins register, a record of the wrong type, or an implementation that
raises is reported against that plugin only; their return values are ignored.

``run_stage`` is the one hook that is *called around work*: wrapper implementations
(``@hookimpl(wrapper=True)``) act before and after every stage of a turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import typer

    from csm_core.turn import Turn
    from csm_core.records import Backend, Optimizer, StageContext, StageImpl

PROJECT = "csm_multi"

hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)


@hookspec
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register runtimes that turn model components into engines.

    :param register: Call it once per backend with a :class:`csm_core.records.Backend`:
        ``register(Backend(name=..., engines={...}, check=...))``. ``engines`` maps a component kind
        (``"csm"``, ``"codec"``, ``"causal_lm"``, see :mod:`csm_core.components`) to a factory that
        builds that component's engine from its PyTorch module; ``check`` raises
        :class:`csm_core.errors.BackendUnavailable` saying what is missing when the backend cannot run
        here. The optional fields (``devices``, ``prepare``, ``device_check``, ``doctor_checks``) are
        described on the record.
    """


@hookspec
def register_tokenizers(register: Callable[[StageImpl], None]) -> None:
    """Register audio tokenizers (speech -> codes -> speech), e.g. Mimi: the ``tokenizer`` stage.

    :param register: Call it once per tokenizer with a :class:`csm_core.records.StageImpl`. The
        factory receives a :class:`csm_core.records.StageContext` and returns an object with
        ``sample_rate``, ``encode(audio) -> codes [K, F]`` and ``decode(codes) -> audio``
        (:class:`csm_core.stages.Tokenizer`).
    """


@hookspec
def register_transcribers(register: Callable[[StageImpl], None]) -> None:
    """Register speech recognizers: the ``transcriber`` stage.

    :param register: Call it once per transcriber with a :class:`csm_core.records.StageImpl`; the
        factory's object has ``transcribe(audio) -> str`` (:class:`csm_core.stages.Transcriber`).
    """


@hookspec
def register_sentiment_analyzers(register: Callable[[StageImpl], None]) -> None:
    """Register analyzers of how the user spoke: the ``sentiment`` stage.

    :param register: Call it once per analyzer with a :class:`csm_core.records.StageImpl`; the
        factory's object has ``analyze(audio, codes)``, returning an object with ``label`` (the emotion
        heard) and ``to_dict()`` (:class:`csm_core.stages.SentimentAnalyzer`). ``codes`` are the codes
        the tokenizer stage already computed, or None.
    """


@hookspec
def register_llms(register: Callable[[StageImpl], None]) -> None:
    """Register language models that write the reply and choose its emotion: the ``llm`` stage.

    :param register: Call it once per model with a :class:`csm_core.records.StageImpl`; the factory's
        object has ``reply(request) -> Reply`` (:class:`csm_core.stages.ReplyModel`).
    """


@hookspec
def register_tts(register: Callable[[StageImpl], None]) -> None:
    """Register text-to-speech stages, e.g. CSM: the ``tts`` stage.

    :param register: Call it once per stage with a :class:`csm_core.records.StageImpl`; the factory's
        object has ``sample_rate`` and ``speak(request) -> Iterator[SpeechChunk]``, yielding the audio
        and the codes it came from as they are generated (:class:`csm_core.stages.Speaker`).
    """


@hookspec
def register_optimizers(register: Callable[[Optimizer], None]) -> None:
    """Register optimizations that change *how* a turn is computed, not *what*.

    :param register: Call it once per optimizer with a :class:`csm_core.records.Optimizer`
        (``effect="exact"`` or ``"approximate"``).

    When the config lists the optimizer, its factory's object is registered as a plugin for the
    pipeline's lifetime, so it can implement ``run_stage`` (as a wrapper), ``at_safe_point`` and
    ``engine_built``.
    """


@hookspec
def register_commands(cli: typer.Typer) -> None:
    """Add commands to ``csmctl``.

    :param cli: The ``csmctl`` application: decorate functions with ``@cli.command()``, or add a group
        with ``cli.add_typer(...)``; :func:`csm_core.plugin_commands.command_group` gives a group
        another plugin or the core made.

    Called once at every ``csmctl`` start, one plugin at a time, so the implementing module must import
    nothing heavy (import torch and the like inside the command). An implementation that raises, or
    adds a name that is already a command, loses only its own commands: they are rolled back and
    ``csmctl`` warns (:mod:`csm_core.plugin_commands`). The return value is ignored.
    """


@hookspec
def at_safe_point(stage: str, device: str) -> None:
    """A stage reached a point where no intermediate tensor of its work is alive (between two frames).

    :param stage: The stage kind (``"tts"``, ...).
    :param device: The torch device string the stage's models run on (``"cpu"``, ``"cuda:0"``).

    Stages that generate call it through :meth:`csm_core.records.StageContext.safe_point` after each
    unit of work; every implementation is called and the return values are ignored. Optimizers
    implement it to release cached memory there. It must not change any result and should be cheap:
    it runs once per generated frame.
    """


@hookspec
def engine_built(stage: str, component: str, engine: Any, context: StageContext) -> None:
    """A backend has built ``component``'s engine for ``stage``; adjust it before the stage uses it.

    :param stage: The stage kind the engine serves (``"tts"``, ...).
    :param component: The component (``"csm"``, ``"codec"``, ``"causal_lm"``, ``"speech_to_text"``).
    :param engine: The engine the backend returned (:mod:`csm_core.components`); change it in place,
        through the attributes its interface offers (``CsmEngines.frame_decoder``, say).
    :param context: The stage's :class:`csm_core.records.StageContext` (settings, backend, ``report``).

    Called by :meth:`csm_core.records.StageContext.engine` after every engine a backend builds, and by a
    stage that re-allocates its engines (``CsmEngines.for_batch``) for the new ones; every implementation
    is called and the return values are ignored. Optimizers implement it to install a part of their own
    on the engines (a whole-frame decoder); an implementation that cannot serve this engine raises
    :class:`csm_core.errors.CsmError` saying why and what to change, and the stage fails to build.
    """


@hookspec(firstresult=True)
def run_stage(stage: str, call: Callable[[], Any], turn: Turn) -> Any:
    """Run one stage of a conversation turn and return its result.

    Stops at the first non-None result (``firstresult=True``).

    :param stage: The stage kind (``"tokenizer"``, ``"transcriber"``, ``"sentiment"``, ``"llm"``,
        ``"tts"``).
    :param call: A zero-argument callable that does the stage's work and returns its result.
    :param turn: The :class:`csm_core.pipeline.Turn` filled in so far.
    :returns: The stage's result.

    The core's own implementation (``trylast``) returns ``call()``. A plain implementation that
    returns a value other than None replaces the stage's work (``call`` is not run, the core's
    implementation is not called); returning None leaves the stage to the next implementation, and in
    the end to the core's. Implement it with ``@hookimpl(wrapper=True)`` to act around every stage; a
    wrapper's return value is the result (return what ``yield`` gave, or a replacement)::

        @hookimpl(wrapper=True)
        def run_stage(stage, call, turn):
            started = time.perf_counter()
            result = yield
            print(stage, time.perf_counter() - started)
            return result
    """
