"""A conversation turn through the stages, with per-stage metrics and conversation state.

Audio in::

    tokenizer (codes) -> transcriber (text) -> sentiment -> llm (reply + emotion)
        -> emotion map (sampling parameters) -> tts (speech, streamed)

Text in skips the stages that need audio. Each stage's implementation and backend are chosen by name
from the config; every name is checked before any model loads, and stage objects are built on first
use. Each stage runs through the ``run_stage`` hook, so wrapper plugins (optimizers, tracing) act
around it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from csm_core.audio import MIMI_SAMPLE_RATE, Audio
from csm_core.config import Settings, apply_overrides
from csm_core.conversation import Conversation
from csm_core.emotion import speech_params
from csm_core.errors import BackendUnavailable, CsmError
from csm_core.metrics import StageTiming, TurnMetrics, peak_rss_bytes
from csm_core.plugins import Plugins
from csm_core.records import StageContext
from csm_core.registry import Registry
from csm_core.stages import Reply, ReplyRequest, Segment, SpeechParams, SpeechRequest

log = logging.getLogger("csm.pipeline")

AUDIO_STAGES = ("tokenizer", "transcriber", "sentiment", "llm", "tts")
TEXT_STAGES = ("llm", "tts")
OnAudio = Callable[[np.ndarray], None]


@dataclass
class Turn:
    """What one turn produced. Wrappers of ``run_stage`` see it while it is being filled in."""

    input_audio: Audio | None = None
    codes: np.ndarray | None = None
    transcript: str | None = None
    sentiment: Any = None
    reply: Reply | None = None
    params: SpeechParams | None = None
    audio: Audio | None = None
    reply_codes: np.ndarray | None = None
    metrics: TurnMetrics = field(default_factory=TurnMetrics)

    def to_dict(self) -> dict:
        """The turn for ``--json``: text, sentiment, emotion, parameters and metrics (no samples)."""
        sentiment = self.sentiment
        return {
            "transcript": self.transcript,
            "sentiment": sentiment.to_dict() if hasattr(sentiment, "to_dict") else sentiment,
            "emotion": self.reply.emotion if self.reply else None,
            "reply": self.reply.text if self.reply else None,
            "reply_fallback": self.reply.fallback if self.reply else None,
            "params": None if self.params is None else vars(self.params),
            "audio_seconds": self.audio.duration_s if self.audio else 0.0,
            "metrics": self.metrics.to_dict(),
        }


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
        self._stages: dict[str, Any] = {}
        self._contexts: dict[str, StageContext] = {}
        self._resources: dict = {}  # shared by all stage contexts: models loaded once per pipeline
        self._optimizer_plugins: list[str] = []
        self._pending_events: list[str] = []  # reported with the next turn's metrics
        self._enable_optimizers()

    # -- construction ---------------------------------------------------------------------------
    def _context(self, stage: str) -> StageContext:
        if stage not in self._contexts:
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
        that the backend provides the engines the stage needs, and that it can run here."""
        for stage in stages:
            impl = self.registry.stage(stage, getattr(self.settings.stages, stage))
            if impl.components:
                backend = self._context(stage).backend
                missing = [c for c in impl.components if not backend.supports(c)]
                if missing:
                    raise CsmError(
                        f"{stage} stage {impl.name!r} needs {', '.join(missing)} engines, which backend "
                        f"{backend.name!r} does not provide; choose a backend that does "
                        f"(`csmctl doctor` lists them)"
                    )
                try:
                    backend.check()
                except BackendUnavailable as exc:
                    from csm_core.doctor import usable_backends

                    usable = usable_backends(self.registry)
                    raise BackendUnavailable(
                        f"{exc}. Backends usable here: {', '.join(usable) or 'none'} (see `csmctl doctor`)"
                    ) from None

    def stage(self, kind: str) -> Any:
        """The stage object for ``kind``, built on first use."""
        if kind not in self._stages:
            self.require(kind)
            impl = self.registry.stage(kind, getattr(self.settings.stages, kind))
            log.info("loading %s stage %r", kind, impl.name)
            self._stages[kind] = impl.factory(self._context(kind))
        return self._stages[kind]

    def close(self) -> None:
        for name in self._optimizer_plugins:
            self.plugins.unregister(name)
        self._optimizer_plugins.clear()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running --------------------------------------------------------------------------------
    def _run(self, kind: str, turn: Turn, work: Callable[[Any], Any]) -> Any:
        stage = self.stage(kind)
        started = time.perf_counter()
        result = self.plugins.hook.run_stage(stage=kind, call=lambda: work(stage), turn=turn)
        context = self._contexts[kind]
        turn.metrics.stages.append(
            StageTiming(
                stage=kind,
                implementation=getattr(self.settings.stages, kind),
                backend=context.backend.name if context.backend else None,
                seconds=time.perf_counter() - started,
                peak_rss_bytes=peak_rss_bytes(),
                peak_device_bytes=_peak_device_bytes(),
            )
        )
        turn.metrics.events.extend(context.events)
        context.events.clear()
        return result

    def speak(self, text: str, on_audio: OnAudio | None = None, emotion: str | None = None,
              context: tuple[Segment, ...] | None = None) -> Turn:
        """Text to speech with the configured voice; ``on_audio`` receives each chunk as it is made."""
        self.require("tts")
        turn = Turn(reply=Reply(text=text, emotion=emotion or "neutral"))
        self._flush_events(turn)
        self._speak(turn, tuple(self.conversation.segments) if context is None else context, on_audio)
        return turn

    def turn(self, audio: Audio | None = None, text: str | None = None,
             on_audio: OnAudio | None = None) -> Turn:
        """One conversation turn: the user's ``audio`` (or ``text``) in, the spoken reply out.

        Both the user's turn and the reply are added to the conversation.
        """
        if (audio is None) == (text is None):
            raise CsmError("a turn takes either audio or text, not both and not neither")
        self.require(*(AUDIO_STAGES if audio is not None else TEXT_STAGES))
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
        self._speak(turn, history + (user,), on_audio)
        self.conversation.add(user)
        self.conversation.add(Segment(self.settings.speaker, turn.reply.text, turn.reply_codes))
        return turn

    def _flush_events(self, turn: Turn) -> None:
        turn.metrics.events.extend(self._pending_events)
        self._pending_events.clear()

    def _speak(self, turn: Turn, context: tuple[Segment, ...], on_audio: OnAudio | None) -> None:
        report = self._context("tts").report
        turn.params = speech_params(self.settings, turn.reply.emotion if turn.reply else None, report)
        request = SpeechRequest(
            text=turn.reply.text, speaker=self.settings.speaker, params=turn.params, context=context
        )
        chunks: list[np.ndarray] = []
        codes: list[np.ndarray] = []
        started = time.perf_counter()

        def generate(speaker) -> None:
            for chunk in speaker.speak(request):
                if turn.metrics.time_to_first_audio_s is None:
                    turn.metrics.time_to_first_audio_s = time.perf_counter() - started
                chunks.append(chunk.samples)
                codes.append(chunk.codes)
                if on_audio is not None:
                    on_audio(chunk.samples)

        self._run("tts", turn, generate)
        turn.metrics.generation_seconds = time.perf_counter() - started
        speaker = self._stages["tts"]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        turn.audio = Audio(samples.astype(np.float32, copy=False), speaker.sample_rate)
        turn.reply_codes = np.concatenate(codes, axis=1) if codes else None
        turn.metrics.audio_seconds = turn.audio.duration_s
        turn.metrics.frames = 0 if turn.reply_codes is None else int(turn.reply_codes.shape[1])


def _peak_device_bytes() -> int | None:
    """Peak CUDA memory allocated by torch, when torch is loaded and CUDA is in use."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())
