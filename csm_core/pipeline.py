"""A conversation turn through the stages, with per-stage metrics and conversation state.

Audio in::

    tokenizer (codes) -> transcriber (text) -> sentiment -> llm (reply + emotion)
        -> emotion map (sampling parameters) -> tts (speech, streamed)

Text in skips the stages that need audio. Each stage's implementation and backend are chosen by name
from the config; every name is checked before any model loads, and stage objects are built on first
use, or ahead of the first turn by :meth:`Pipeline.preload`; each object is checked against its stage
protocol and the capabilities it claims as it is built (:func:`csm_core.stages.check_stage`). Each
stage runs through the ``run_stage`` hook, so wrapper plugins (optimizers, tracing) act around it.

Speaking: :meth:`Pipeline.speak`, :meth:`Pipeline.turn` and :meth:`Pipeline.speak_batch` build their
speech requests one way (:meth:`Pipeline._speak`): the emotion map's sampling parameters, the voice
profile pinned, the context chosen by the context policy (:mod:`csm_core.context_policy`).

Loading (``Settings.loading``):

- ``"eager"`` (default): ``preload(stages)`` builds the stages before it returns; a stage not
  preloaded is built on first use.
- ``"progressive"`` (an optimizer may switch it on through ``configure``): ``preload(stages)``
  checks the names, starts one background thread that builds the stages in the order a turn needs
  them (:func:`load_order`), and returns at once. ``stage(kind)`` waits for a stage the thread owns;
  a failed background load is raised in the caller's thread as :class:`StageLoadError` naming the
  stage, with the original exception as its ``__cause__``.

Thread safety: each stage has its own lock and is built at most once. Factories run one at a time
(``_build_lock``) because the models they share through :meth:`StageContext.resource` are built
check-then-set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from csm_core.audio import MIMI_SAMPLE_RATE, Audio
from csm_core.backend_coverage import missing_engines_message, stage_coverage
from csm_core.config import Settings, apply_overrides
from csm_core.context_policy import context_for_turn, stage_window
from csm_core.conversation import Conversation
from csm_core.doctor import usable_backends
from csm_core.emotion import speech_params
from csm_core.errors import BackendUnavailable, CsmError
from csm_core.metrics import StageTiming, peak_rss_bytes
from csm_core.plugins import Plugins
from csm_core.records import StageContext
from csm_core.registry import Registry
from csm_core.stages import (
    BATCH, Reply, ReplyRequest, Segment, SpeechRequest, check_stage, has_capability,
)
from csm_core.turn import Turn
from csm_core.user_text import check_text
from csm_core.voice_profile import profile_segment, tokenizer_encoder

log = logging.getLogger("csm.pipeline")

AUDIO_STAGES = ("tokenizer", "transcriber", "sentiment", "llm", "tts")
TEXT_STAGES = ("llm", "tts")
OnAudio = Callable[[np.ndarray], None]


class StageLoadError(CsmError):
    """A stage failed to load in the background; raised where the stage is first used.

    ``stage`` is the stage kind; the original exception is the ``__cause__``.
    """

    def __init__(self, stage: str, implementation: str, error: BaseException):
        self.stage = stage
        super().__init__(
            f"the {stage} stage {implementation!r} failed to load in the background: "
            f"{type(error).__name__}: {error}"
        )


def load_order(stages: Iterable[str]) -> list[str]:
    """``stages`` without repeats, in the order a turn uses them (tokenizer ... tts).

    Raises :class:`CsmError` naming an unknown stage kind and the known ones.
    """
    wanted = list(dict.fromkeys(stages))
    unknown = [kind for kind in wanted if kind not in AUDIO_STAGES]
    if unknown:
        raise CsmError(f"unknown stage {unknown[0]!r} to load: choose from {', '.join(AUDIO_STAGES)}")
    return sorted(wanted, key=AUDIO_STAGES.index)


@dataclass
class _StageSlot:
    """One stage's object and how its load went. ``lock`` guards the fields; ``pending`` is set by a
    progressive preload and fires when the background thread has finished with this stage."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    value: Any = None
    loaded: bool = False
    error: BaseException | None = None
    pending: threading.Event | None = None


class Pipeline:
    """Runs turns with the stages and backends that ``settings`` names."""

    def __init__(
        self,
        settings: Settings,
        plugins: Plugins | None = None,
        conversation: Conversation | None = None,
    ):
        self.settings = settings
        self.plugins = plugins if plugins is not None else Plugins.from_environment()
        self.registry = Registry.collect(self.plugins)
        self.conversation = conversation if conversation is not None else Conversation()
        self._slots: dict[str, _StageSlot] = {}
        self._guard = threading.RLock()  # the slot and context dicts
        self._build_lock = threading.Lock()  # one factory at a time (shared resources)
        self._loaders: list[threading.Thread] = []
        self._closed = False
        self._startup_seconds: float | None = None  # of the last preload, reported with the next turn
        self._contexts: dict[str, StageContext] = {}
        self._resources: dict = {}  # shared by all stage contexts: models loaded once per pipeline
        self._optimizer_plugins: list[str] = []
        self._profile: tuple[Segment | None] | None = None  # the voice profile, encoded once
        self._pending_events: list[str] = []  # reported with the next turn's metrics
        self._enable_optimizers()

    # -- construction ---------------------------------------------------------------------------
    def _context(self, stage: str) -> StageContext:
        with self._guard:
            if stage not in self._contexts:
                backend = None  # a stage that declares no components gets no backend (nor the optimizers)
                if stage in self.registry.stages and self.registry.stage(stage, getattr(self.settings.stages, stage)).components:
                    backend = self.registry.backend(self.settings.backend_for(stage))
                self._contexts[stage] = StageContext(
                    stage=stage, settings=self.settings, registry=self.registry, backend=backend,
                    log=logging.getLogger(f"csm.{stage}"), resources=self._resources, hook=self.plugins.hook,
                )
            return self._contexts[stage]

    def _enable_optimizers(self) -> None:
        """Build each listed optimizer, apply the settings it asks for, register it as a plugin.

        Settings overrides are applied in the order the config lists the optimizers (a later one wins
        on the same field) and before any stage exists, so every stage is built with them.
        """
        records = [self.registry.optimizer(name) for name in self.settings.optimizers]  # names first
        instances = [(record, record.factory(self._context("optimizer"))) for record in records]
        for record, instance in instances:
            configure = getattr(instance, "configure", None)
            overrides = dict(configure(self.settings) or {}) if configure is not None else {}
            if overrides:
                self.settings = apply_overrides(self.settings, overrides, f"optimizer {record.name!r}")
                for dotted, value in overrides.items():
                    self._pending_events.append(f"optimizer {record.name} set {dotted} = {value!r}")
                    log.info("optimizer %s set %s = %r", record.name, dotted, value)
        self._contexts.clear()  # contexts made so far carry the settings from before the overrides
        # pluggy calls the last registered wrapper outermost, so register in reverse: the first
        # optimizer listed in the config wraps all the others.
        for record, instance in reversed(instances):
            self._optimizer_plugins.append(self.plugins.register(instance, name=f"optimizer:{record.name}"))

    def require(self, *stages: str) -> None:
        """Check, before anything loads, that each stage's implementation and backend are registered,
        that the backend provides the engines the stage needs (every stage that lacks some is named in
        one message, :mod:`csm_core.backend_coverage`), that it runs on the requested device, and that it
        can run here."""
        rows = stage_coverage(self.registry, self.settings, stages)
        message = missing_engines_message(rows)
        if message:
            raise CsmError(message)
        for row in rows:
            if not row.components:
                continue
            backend = self._context(row.stage).backend
            kind = self.settings.device.split(":")[0]
            if kind != "auto" and kind not in backend.devices:
                raise CsmError(
                    f"{row.stage} stage {row.implementation!r}: backend {backend.name!r} runs on "
                    f"{', '.join(backend.devices)}, not on device {self.settings.device!r}: set --device (device = "
                    f"...) to one of those, or choose another backend for the stage (backends.{row.stage})"
                )
            if row.unavailable:
                usable = usable_backends(self.registry)
                raise BackendUnavailable(
                    f"{row.unavailable}. Backends usable here: {', '.join(usable) or 'none'} (see `csmctl doctor`)"
                )

    # -- loading --------------------------------------------------------------------------------
    def _slot(self, kind: str) -> _StageSlot:
        with self._guard:
            return self._slots.setdefault(kind, _StageSlot())

    def _build(self, kind: str) -> Any:
        impl = self.registry.stage(kind, getattr(self.settings.stages, kind))
        context = self._context(kind)
        with self._build_lock:
            log.info("loading %s stage %r", kind, impl.name)
            stage = impl.factory(context)
        check_stage(kind, impl.name, stage)
        return stage

    def stage(self, kind: str) -> Any:
        """The stage object for ``kind``: built on first use, or waited for while a progressive
        :meth:`preload` builds it. A failed background load raises :class:`StageLoadError` here."""
        slot = self._slot(kind)
        if slot.pending is not None:
            slot.pending.wait()
        with slot.lock:
            if not slot.loaded:
                if slot.error is not None:
                    implementation = getattr(self.settings.stages, kind)
                    raise StageLoadError(kind, implementation, slot.error) from slot.error
                self.require(kind)
                slot.value = self._build(kind)
                slot.loaded = True
            return slot.value

    def is_loaded(self, kind: str) -> bool:
        """Whether the ``kind`` stage object exists now (never waits)."""
        with self._guard:
            slot = self._slots.get(kind)
        return slot is not None and slot.loaded

    def preload(self, stages: Iterable[str]) -> float:
        """Load ``stages`` ahead of the first turn; returns the seconds this call took.

        Names, implementations and backends are checked first, in the caller's thread (errors raise
        here). With ``settings.loading == "eager"`` the stages are built before this returns; with
        ``"progressive"`` a background thread builds them in :func:`load_order` and this returns at
        once. The time is reported as ``startup_seconds`` in the next turn's metrics.
        """
        started = time.perf_counter()
        order = load_order(stages)
        self.require(*order)
        if self.settings.loading == "progressive":
            queued = []
            with self._guard:  # not the slot locks: a load in progress holds its slot's lock
                for kind in order:
                    slot = self._slot(kind)
                    if slot.loaded or slot.error is not None or slot.pending is not None:
                        continue
                    slot.pending = threading.Event()
                    queued.append(kind)
            if queued:
                thread = threading.Thread(
                    target=self._load_in_background, args=(queued,), name="csm-preload", daemon=True
                )
                self._loaders.append(thread)
                thread.start()
        else:
            for kind in order:
                self.stage(kind)
        self._startup_seconds = time.perf_counter() - started
        return self._startup_seconds

    def _load_in_background(self, kinds: list[str]) -> None:
        for kind in kinds:
            slot = self._slot(kind)
            try:
                with slot.lock:
                    if slot.loaded:
                        continue
                    if self._closed:
                        slot.error = CsmError("the pipeline was closed before this stage loaded")
                        continue
                    try:
                        slot.value = self._build(kind)
                        slot.loaded = True
                    except BaseException as exc:  # noqa: BLE001 - re-raised where the stage is used
                        slot.error = exc
                        log.warning("loading the %s stage in the background failed: %s", kind, exc)
            finally:
                slot.pending.set()

    def close(self) -> None:
        """Wait for a background load in progress (no new one starts); close every loaded stage that has a
        ``close()`` (a worker it started); unregister the optimizers."""
        self._closed = True
        for thread in self._loaders:
            thread.join()
        self._loaders.clear()
        with self._guard:
            slots = list(self._slots.values())
        for slot in slots:
            close = getattr(slot.value, "close", None) if slot.loaded else None
            if close is not None:
                close()
        for name in self._optimizer_plugins:
            self.plugins.unregister(name)
        self._optimizer_plugins.clear()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running --------------------------------------------------------------------------------
    def _run(self, kind: str, turn: Turn, work: Callable[[Any], Any], rows: Sequence[Turn] = ()) -> Any:
        """``work(stage)`` through the ``run_stage`` hook (whose wrappers see ``turn``); the stage's timing
        and the events it reported go to ``turn``, or to each of ``rows`` when one run serves several turns
        (a batch)."""
        stage = self._loaded_stage(kind, turn)
        started = time.perf_counter()
        result = self.plugins.hook.run_stage(stage=kind, call=lambda: work(stage), turn=turn)
        context = self._contexts[kind]
        timing = StageTiming(
            stage=kind,
            implementation=getattr(self.settings.stages, kind),
            backend=context.backend.name if context.backend else None,
            seconds=time.perf_counter() - started,
            peak_rss_bytes=peak_rss_bytes(),
            peak_device_bytes=_peak_device_bytes(),
        )
        for each in rows or (turn,):
            each.metrics.stages.append(timing)
            each.metrics.events.extend(context.events)
        context.events.clear()
        return result

    def speak(self, text: str, on_audio: OnAudio | None = None, emotion: str | None = None,
              context: tuple[Segment, ...] | None = None) -> Turn:
        """Text to speech with the configured voice; ``on_audio`` receives each chunk as it is made.

        ``text`` is checked first (:func:`csm_core.user_text.check_text`: not empty, UTF-8, no control
        characters, at most ``MAX_TEXT_CHARS``)."""
        check_text(text, "the text to speak")
        self.require("tts", *self._profile_stages())
        turn = Turn(reply=Reply(text=text, emotion=emotion or "neutral"))
        self._flush_events(turn)
        history = tuple(self.conversation.segments) if context is None else tuple(context)
        self._speak([turn], history, None, on_audio)
        return turn

    def speak_batch(self, texts: Sequence[str], emotion: str | None = None,
                    context: tuple[Segment, ...] | None = None) -> list[Turn]:
        """Speak ``texts`` together, in one batch of the tts stage (its ``"batch"`` capability,
        :class:`~csm_core.stages.BatchSpeaker`); one :class:`Turn` per text, in order.

        Each text gets the request :meth:`speak` would build for it (voice profile, context policy,
        emotion map), after ``context`` (None: the conversation so far); none is added to the
        conversation. Each turn gets the whole batch's tts timing and ``generation_seconds``; wrappers of
        ``run_stage`` act around the whole batch and see the first turn. Texts are checked as
        :meth:`speak` checks its text. Most callers want :func:`csm_core.utterances.speak_many`, which
        splits the texts into batches of ``generation.max_batch``.
        """
        if isinstance(texts, str) or not texts:
            raise CsmError("speak_batch: give a non-empty list of texts to speak together")
        for index, text in enumerate(texts):
            check_text(text, f"text {index} to speak")
        self.require("tts", *self._profile_stages())
        turns = [Turn(reply=Reply(text=text, emotion=emotion or "neutral")) for text in texts]
        self._flush_events(turns[0])
        speaker = self._loaded_stage("tts", turns[0])
        if not has_capability(speaker, BATCH):
            raise CsmError(
                f"the tts stage {self.settings.stages.tts!r} cannot speak in batches (it does not claim the "
                f"{BATCH!r} capability: no speak_batch); unset generation.max_batch (or remove the optimizer "
                "that sets it) to speak one by one"
            )
        history = tuple(self.conversation.segments) if context is None else tuple(context)
        self._speak(turns, history, None, None, batched=True)
        return turns

    def turn(self, audio: Audio | None = None, text: str | None = None,
             on_audio: OnAudio | None = None) -> Turn:
        """One conversation turn: the user's ``audio`` (or ``text``) in, the spoken reply out.

        Both the user's turn and the reply are added to the conversation. ``text`` is checked first,
        as :meth:`speak` checks its text.
        """
        if (audio is None) == (text is None):
            raise CsmError("a turn takes either audio or text, not both and not neither")
        if text is not None:
            check_text(text, "the user's text")
        self.require(*(AUDIO_STAGES if audio is not None else TEXT_STAGES), *self._profile_stages())
        turn = Turn(transcript=text)
        self._flush_events(turn)
        if audio is not None:
            turn.input_audio = audio.resampled(MIMI_SAMPLE_RATE)
            turn.codes = self._run("tokenizer", turn, lambda s: s.encode(turn.input_audio))
            turn.transcript = self._run("transcriber", turn, lambda s: s.transcribe(turn.input_audio))
            turn.sentiment = self._run("sentiment", turn, lambda s: s.analyze(turn.input_audio, turn.codes))
        history = tuple(self.conversation.segments)
        request = ReplyRequest(
            transcript=turn.transcript or "",
            sentiment=turn.sentiment,
            history=history,
            emotions=tuple(self.settings.emotions),
        )
        turn.reply = self._run("llm", turn, lambda s: s.reply(request))
        if turn.reply.fallback:
            turn.metrics.events.append(f"llm reply fell back to plain text: {turn.reply.fallback}")
        user = Segment(self.settings.user_speaker, turn.transcript or "", turn.codes)
        self._speak([turn], history, user, on_audio)
        self.conversation.add(user)
        self.conversation.add(Segment(self.settings.speaker, turn.reply.text, turn.reply_codes))
        return turn

    def _loaded_stage(self, kind: str, turn: Turn) -> Any:
        """``stage(kind)``, adding the time spent building or waiting for it to ``load_seconds``."""
        if self.is_loaded(kind):
            return self.stage(kind)
        started = time.perf_counter()
        stage = self.stage(kind)
        turn.metrics.load_seconds += time.perf_counter() - started
        return stage

    def _flush_events(self, turn: Turn) -> None:
        turn.metrics.events.extend(self._pending_events)
        self._pending_events.clear()
        turn.metrics.startup_seconds, self._startup_seconds = self._startup_seconds, None

    def _profile_stages(self) -> tuple[str, ...]:
        """The stages the voice profile needs: the tokenizer encodes its clip (once, then cached)."""
        return ("tokenizer",) if self.settings.voice.audio is not None else ()

    def voice_profile(self) -> Segment | None:
        """The configured voice profile (``[voice]``) as a context segment, encoded on first use and
        cached on disk; None when no profile is configured."""
        if self._profile is None:
            report = self._context("tts").report
            self._profile = (profile_segment(self.settings, tokenizer_encoder(self), report),)
        return self._profile[0]

    def _speak(self, turns: list[Turn], history: tuple[Segment, ...], user: Segment | None,
               on_audio: OnAudio | None, batched: bool = False) -> None:
        """Speak each turn's reply after ``history`` (+ the ``user`` segment): the one speaking path.

        Every turn gets the same request building: sampling parameters from the emotion map (one
        emotion per call), the voice profile pinned, the context chosen within the tts stage's position
        window by :func:`~csm_core.context_policy.context_for_turn`. One turn is spoken with the stage's
        ``speak``; with ``batched`` all of them together with its ``speak_batch``. ``on_audio`` receives
        every chunk as it is made.
        """
        report = self._context("tts").report
        emotion = turns[0].reply.emotion if turns[0].reply else None
        params = speech_params(self.settings, emotion, report)
        speaker = self._loaded_stage("tts", turns[0])
        max_positions, text_tokens = stage_window(speaker)
        profile = self.voice_profile()
        requests = []
        for turn in turns:
            turn.params = params
            context, events = context_for_turn(
                history, profile, user, self.settings,
                speaker=self.settings.speaker, text=turn.reply.text,
                max_positions=max_positions, text_tokens=text_tokens,
            )
            turn.metrics.events.extend(events)
            requests.append(
                SpeechRequest(text=turn.reply.text, speaker=self.settings.speaker, params=params, context=context)
            )
        chunks: list[list[np.ndarray]] = [[] for _ in turns]
        codes: list[list[np.ndarray]] = [[] for _ in turns]
        started = time.perf_counter()

        def generate(speaker) -> None:
            stream = speaker.speak_batch(requests) if batched else ((0, c) for c in speaker.speak(requests[0]))
            for row, chunk in stream:
                metrics = turns[row].metrics
                if metrics.time_to_first_audio_s is None:
                    metrics.time_to_first_audio_s = time.perf_counter() - turns[row].started
                chunks[row].append(chunk.samples)
                codes[row].append(chunk.codes)
                if on_audio is not None:
                    on_audio(chunk.samples)

        self._run("tts", turns[0], generate, rows=turns)
        seconds = time.perf_counter() - started
        for turn, row_chunks, row_codes in zip(turns, chunks, codes):
            samples = np.concatenate(row_chunks) if row_chunks else np.zeros(0, dtype=np.float32)
            turn.audio = Audio(samples.astype(np.float32, copy=False), speaker.sample_rate)
            turn.reply_codes = np.concatenate(row_codes, axis=1) if row_codes else None
            turn.metrics.generation_seconds = seconds
            turn.metrics.audio_seconds = turn.audio.duration_s
            turn.metrics.frames = 0 if turn.reply_codes is None else int(turn.reply_codes.shape[1])


def _peak_device_bytes() -> int | None:
    """Peak CUDA memory allocated by torch, when torch is loaded and CUDA is in use."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())
