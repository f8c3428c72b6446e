"""The ``pipelined-decoding`` optimizer: frame t+1 is generated while frame t is decoded to audio.

What it changes: only ``options.csm.pipelined_decoding``, set to true through ``configure``. The work
lives in the ``csm`` TTS stage (:mod:`csm_model.pipelined_decoding`): the frame loop runs on a
producer thread, a small queue ahead of the Mimi decoding on the caller's thread (on CUDA, decoding
runs on its own stream that waits for each frame's event).

Effect: exact. One frame loop makes the same frames, and Mimi decodes them in the same order with the
same streaming state, so codes and audio are identical (tested with greedy decoding). First audio comes
when frame 0 is decoded, as before. A cancelled request (the caller closes the stream) stops the
producer before its next frame.

Gain: the time of the two halves overlaps where they can run at once: on a CPU, while the cores are
not all busy with one of them (torch's and Mimi's ops release the GIL); on a GPU, where launching
kernels from one Python thread is what limits a small batch. Applies to one-by-one speaking
(``speak``) and to continuous batching (``SpeechSession``: the server's rows and ``speak_batch``), where
a step decodes the previous step's frames on a worker thread while it generates the next ones.
"""

from __future__ import annotations

from typing import Any, Mapping

from csm_core.records import Optimizer, StageContext


class PipelinedDecoding:
    """Switches ``options.csm.pipelined_decoding`` on; has no options of its own and no hooks."""

    def __init__(self, context: StageContext):
        self.context = context

    def configure(self, settings) -> Mapping[str, Any]:
        return {"options.csm.pipelined_decoding": True}


OPTIMIZER = Optimizer(
    name="pipelined-decoding",
    factory=PipelinedDecoding,
    effect="exact",
    description="csm stage: the next frame is generated on a thread while the last is decoded to audio; "
    "identical codes and audio",
)
