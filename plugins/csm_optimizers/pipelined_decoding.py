"""The ``pipelined-decoding`` optimizer: frame t is decoded to audio while frame t+1 is generated.

What it changes: ``options.csm.pipelined_decoding`` (true) and ``options.csm.decoding_worker`` (its
``worker`` option), through ``configure``. The work lives in the ``csm`` TTS stage
(:mod:`csm_model.pipelined_decoding`, :mod:`csm_model.decoding_workers`): each frame goes to a decoding
worker, and the frame loop runs one frame ahead of the audio it hands out. The worker is a process for
PyTorch's Mimi on a CPU (whose Python would hold the GIL against the frame loop's), a thread otherwise
(ONNX Runtime's run releases the GIL; on CUDA the thread decodes on its own stream).

Effect: exact. One frame loop makes the same frames, and one row of the worker decodes them in order
with its own streaming state, so codes and audio are identical (tested with greedy decoding, on both
workers). First audio comes when frame 0 is decoded, as before. A cancelled request (the caller closes
the stream) stops the frame loop at once: it runs on the caller's thread.

Gain: at most 1 + D/G, with D Mimi's time per frame and G the frame loop's (docs/optimizers.md). Applies
to one-by-one speaking (``speak``) and to continuous batching (``SpeechSession``: the server's rows and
``speak_batch``), where a step decodes the previous step's frames on the worker while it generates.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from csm_core.config import plugin_options
from csm_core.records import Optimizer, StageContext

NAME = "pipelined-decoding"


class PipelinedDecodingOptions(BaseModel):
    """``[options.pipelined-decoding]``."""

    model_config = ConfigDict(extra="forbid")

    worker: Literal["auto", "thread", "process"] = Field(
        "auto", description="sets options.csm.decoding_worker to 'thread' or 'process' (CPU only); 'auto' leaves "
        "it as configured (its default, 'auto': a process for PyTorch's Mimi on a CPU, a thread otherwise)"
    )


class PipelinedDecoding:
    """Switches ``options.csm.pipelined_decoding`` on with the chosen worker; no hooks."""

    def __init__(self, context: StageContext):
        self.context = context
        self.options = plugin_options(context.settings, NAME, PipelinedDecodingOptions)

    def configure(self, settings) -> Mapping[str, Any]:
        changes: dict[str, Any] = {"options.csm.pipelined_decoding": True}
        if self.options.worker != "auto":  # "auto" leaves the stage's own setting (default "auto") as it is
            changes["options.csm.decoding_worker"] = self.options.worker
        return changes


OPTIMIZER = Optimizer(
    name=NAME,
    factory=PipelinedDecoding,
    effect="exact",
    description="csm stage: frame t is decoded to audio on a worker (a process for PyTorch's Mimi on a CPU, "
    "else a thread) while frame t+1 is generated; identical codes and audio",
)
