"""``layout = "stages"``: the transcriber, sentiment, llm and tts stages in Ray Serve deployments of
their own, joined to the front replicas with deployment handles.

- :class:`StageServer` is what a stage replica runs (``csm_serve.ray_app`` makes it a deployment):
  a pipeline of the configured settings that builds its one stage in the constructor (so Ray routes
  to the replica only once the model is loaded) and answers the stage's calls, one at a time
  (``max_ongoing_requests`` of the stage deployment is how many wait in the replica).
- In a front replica the stage is the ``ray-remote`` implementation (:class:`RemoteStages`, a plugin
  registered into that replica's pipeline): objects with the stage's methods that call the handle
  and wait (they run on the scheduler's worker thread, never on the event loop). The tts stage's
  chunks stream back (``stream=True``); a cancelled request closes the stream, which cancels the
  remote generator between two frames.

The front replica's pipeline runs each remote call through ``run_stage`` like a local stage, so the
metrics and the optimizers' wrappers see it; optimizers that change settings act in the stage
replicas, which build their stage with the same settings.

Nothing here imports Ray: the handles are passed in by ``csm_serve.ray_app``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator

from csm_core import hookimpl
from csm_core.config import Settings
from csm_core.errors import CsmError
from csm_core.records import StageImpl
from csm_serve.ray_options import REMOTE_IMPLEMENTATION

log = logging.getLogger("csm.serve.ray")


class StageServer:
    """One stage of the pipeline, served to the front replicas (the body of a stage deployment)."""

    def __init__(self, stage: str, settings: Settings):
        from csm_core.pipeline import Pipeline

        self.kind = stage
        self.pipeline = Pipeline(settings)
        self.stage = self.pipeline.stage(stage)  # loads the model now: the replica is ready when it returns
        self._lock = threading.Lock()
        log.info("%s stage %r loaded", stage, getattr(settings.stages, stage))

    def info(self) -> dict:
        """What a front replica reads once: the tts stage's sample rate, position budget and device."""
        return {"stage": self.kind, "sample_rate": getattr(self.stage, "sample_rate", None),
                "max_positions": getattr(self.stage, "max_positions", None),
                "device": str(getattr(self.stage, "device", self.pipeline.settings.device))}

    def transcribe(self, audio):
        with self._lock:
            return self.stage.transcribe(audio)

    def analyze(self, audio, codes):
        with self._lock:
            return self.stage.analyze(audio, codes)

    def reply(self, request):
        with self._lock:
            return self.stage.reply(request)

    def count_text_tokens(self, text: str) -> int:
        return int(self.stage.count_text_tokens(text))

    def speak(self, request) -> Iterator[Any]:
        """The tts stage's chunks as they are made (a generator: the handle streams it)."""
        with self._lock:
            chunks = self.stage.speak(request)
            try:
                yield from chunks
            finally:
                chunks.close()  # the caller went away: stop within a frame

    def check_health(self) -> None:
        """Ray's health check: the stage object exists (the constructor raised otherwise)."""
        if self.stage is None:
            raise RuntimeError(f"the {self.kind} stage is not loaded")

    def __del__(self):
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close()


def _wait(response):
    """The value of a DeploymentResponse (raises what the stage raised; a stage replica that died
    mid-call raises Ray's actor error, which fails that request alone with a 500)."""
    return response.result()


class _Remote:
    def __init__(self, kind: str, handle):
        self.kind, self.handle = kind, handle


class RemoteTranscriber(_Remote):
    def transcribe(self, audio):
        return _wait(self.handle.transcribe.remote(audio))


class RemoteSentiment(_Remote):
    def analyze(self, audio, codes):
        return _wait(self.handle.analyze.remote(audio, codes))


class RemoteReplyModel(_Remote):
    def reply(self, request):
        return _wait(self.handle.reply.remote(request))


class RemoteSpeaker(_Remote):
    """The tts stage in its own deployment: ``speak`` streams the remote generator's chunks."""

    capabilities = frozenset()  # no position-window or batch engines here: the stage replica has them

    def __init__(self, kind: str, handle):
        super().__init__(kind, handle)
        info = _wait(handle.info.remote())  # waits until a tts replica is up
        self.sample_rate = int(info["sample_rate"])
        if info.get("max_positions") is not None:
            self.max_positions = int(info["max_positions"])
        self.device = info.get("device")

    def count_text_tokens(self, text: str) -> int:
        return _wait(self.handle.count_text_tokens.remote(text))

    def speak(self, request):
        stream = self.handle.options(stream=True).speak.remote(request)
        try:
            for chunk in stream:
                yield chunk
        finally:
            try:
                stream.cancel()  # a cancelled request: the remote generator stops too
            except Exception:  # noqa: BLE001 - it may have ended already
                pass


REMOTE_CLASSES = {"transcriber": RemoteTranscriber, "sentiment": RemoteSentiment, "llm": RemoteReplyModel,
                  "tts": RemoteSpeaker}
_HOOKS = {"transcriber": "register_transcribers", "sentiment": "register_sentiment_analyzers",
          "llm": "register_llms", "tts": "register_tts"}


class RemoteStages:
    """A plugin for a front replica's pipeline: the ``ray-remote`` implementation of each stage whose
    deployment handle it was given."""

    def __init__(self, handles: dict[str, Any]):
        unknown = sorted(set(handles) - set(REMOTE_CLASSES))
        if unknown:
            raise CsmError(f"no remote implementation of the {unknown[0]} stage")
        self.handles = dict(handles)

    def _register(self, kind: str, register) -> None:
        if kind in self.handles:
            handle, cls = self.handles[kind], REMOTE_CLASSES[kind]
            register(StageImpl(name=REMOTE_IMPLEMENTATION, factory=lambda context: cls(kind, handle),
                               description=f"the {kind} stage in a Ray Serve deployment of its own"))

    @hookimpl
    def register_transcribers(self, register):
        self._register("transcriber", register)

    @hookimpl
    def register_sentiment_analyzers(self, register):
        self._register("sentiment", register)

    @hookimpl
    def register_llms(self, register):
        self._register("llm", register)

    @hookimpl
    def register_tts(self, register):
        self._register("tts", register)


def front_plugins(handles: dict[str, Any]):
    """The plugins of a front replica's pipeline: the installed ones plus :class:`RemoteStages`."""
    from csm_core.plugins import Plugins

    plugins = Plugins.from_environment()
    if handles:
        plugins.register(RemoteStages(handles), name="csm-serve-ray-stages")
    return plugins
