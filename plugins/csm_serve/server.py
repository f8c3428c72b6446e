"""Running the server: build the state, check the pipeline's names, serve with uvicorn, stop cleanly.

:func:`serve` returns the command's exit status:

- ``0`` after SIGTERM: new requests are refused at once (uvicorn stops taking connections, the
  scheduler new jobs); the requests in flight have ``shutdown_grace_s`` seconds to finish, then their
  jobs are cancelled (within one frame) and their streams end; the lifespan's shutdown joins the worker;
- ``130`` after Ctrl-C (SIGINT), the same way, as every csmctl command reports Ctrl-C;
- ``1`` when loading the models failed (the reason is logged and shown by ``/ready`` until then).

The names in the config (stages, backends, optimizers) are checked before the port is bound, so a bad
config fails at once; the models then load on the worker thread while ``/health`` already answers.
"""

from __future__ import annotations

import logging
import signal
import threading

from csm_core.config import Settings
from csm_core.pipeline import AUDIO_STAGES, Pipeline
from csm_serve.conversations import ConversationStore
from csm_serve.metrics import ServeMetrics
from csm_serve.options import ServeOptions
from csm_serve.scheduler import Scheduler
from csm_serve.state import ServerState
from csm_serve.voices import VoiceStore

log = logging.getLogger("csm.serve")


def startup_stages(settings: Settings, options: ServeOptions) -> list[str]:
    """The stages loaded before ``/ready``: tts and the tokenizer (cloned voices), plus the
    conversation stages with ``preload_conversation``."""
    return list(AUDIO_STAGES) if options.preload_conversation else ["tokenizer", "tts"]


def build_state(settings: Settings, options: ServeOptions, plugins=None) -> ServerState:
    """The server's state; the scheduler's ``load`` builds the pipeline on the worker thread.

    Checks the stage, backend and optimizer names first (raises :class:`~csm_core.errors.CsmError`).
    ``plugins``: the pipeline's plugin manager (default: the installed plugins; a Ray front replica adds
    its remote stages, see :mod:`csm_serve.ray_stages`)."""
    pipeline = Pipeline(settings, plugins=plugins)
    try:
        pipeline.require(*startup_stages(settings, options))
    except BaseException:
        pipeline.close()
        raise
    metrics = ServeMetrics()
    voices = VoiceStore(options.voices_dir or settings.resolved_cache_dir() / "serve-voices", settings)
    conversations = ConversationStore(options.max_conversations, options.conversation_ttl_s)
    holder: dict = {}

    def load() -> Pipeline:
        if options.threads is not None:
            import torch

            torch.set_num_threads(options.threads)
        pipeline.preload(startup_stages(settings, options))
        stage = pipeline.stage("tts")
        state = holder["state"]
        state.sample_rate = int(stage.sample_rate)
        state.device = str(getattr(stage, "device", settings.device))
        pipeline.voice_profile()  # the configured [voice], encoded now rather than on the first request
        return pipeline

    max_frames = settings.generation.frame_limit()
    scheduler = Scheduler(load, options.max_queue,
                          on_finish=lambda job: metrics.job_finished(job, max_frames),
                          on_depth=metrics.queue_depth.set,
                          max_rows=options.max_rows, on_batch=metrics.batch_size.set)
    state = ServerState(settings, options, scheduler, voices, metrics, conversations)
    holder["state"] = state
    return state


GRACE_BACKSTOP_S = 5.0
"""uvicorn's own graceful-shutdown timeout is this much longer than ``shutdown_grace_s``: by then the
scheduler has cancelled the jobs and their responses have ended, so uvicorn need not cancel tasks."""


class _Server:
    """A uvicorn server that, on SIGTERM/SIGINT, stops taking jobs at once and cancels the jobs still
    in flight ``shutdown_grace_s`` later, so their responses end cleanly (a cut-short stream) before
    uvicorn's own timeout."""

    def __new__(cls, config, state: ServerState):
        import uvicorn

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:
                super().handle_exit(sig, frame)
                if not getattr(self, "_csm_stopping", False):
                    self._csm_stopping = True
                    state.scheduler.stop_accepting()
                    log.info("stopping: requests in flight have %.1f s to finish", state.options.shutdown_grace_s)
                    timer = threading.Timer(state.options.shutdown_grace_s, state.scheduler.cancel_all,
                                            args=("the server is shutting down",))
                    timer.daemon = True
                    timer.start()

        return Server(config)


def serve(settings: Settings, options: ServeOptions, log_level: str = "warning") -> int:
    """Serve until SIGTERM or Ctrl-C; returns the exit status (see the module docstring)."""
    import uvicorn

    from csm_serve.app import create_app

    state = build_state(settings, options)
    app = create_app(state)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level=log_level,
                            timeout_graceful_shutdown=options.shutdown_grace_s + GRACE_BACKSTOP_S, lifespan="on",
                            access_log=log_level in ("info", "debug"))
    server = _Server(config, state)
    received: list[int] = []

    def note(sig, frame) -> None:  # uvicorn raises the signal again after its graceful shutdown
        received.append(sig)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}

    def stop_on_failed_load() -> None:
        state.scheduler.loaded.wait()
        if state.scheduler.load_error is not None:
            server.should_exit = True

    threading.Thread(target=stop_on_failed_load, name="csm-serve-load-watch", daemon=True).start()
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if state.scheduler.load_error is not None:
        return 1
    return 130 if signal.SIGINT in received else 0
