"""The ``progressive-loading`` optimizer: load the stages in the background, the one needed first first.

What it changes: only ``Settings.loading``, set to ``"progressive"`` through ``configure``. The work
lives in :class:`csm_core.pipeline.Pipeline`: ``preload(stages)`` checks the stage names,
implementations and backends in the caller's thread, starts one background thread that builds the
stages in the order a turn uses them (:func:`csm_core.pipeline.load_order`; for ``speak`` that is
the tts stage alone, for an audio turn tokenizer, transcriber, sentiment, llm, tts), and returns at
once. ``Pipeline.stage(kind)`` waits for a stage the thread owns, and re-raises a failed load in the
caller's thread as :class:`csm_core.pipeline.StageLoadError` naming the stage.

Effect: exact. The same factories build the same stage objects from the same settings; only *when*
they are built changes, so codes are identical (tested with greedy decoding on the tiny preset).

Risk: a load error is raised at the stage's first use instead of from ``preload``; the start-up time
(``startup_seconds`` in the next turn's metrics) no longer includes loading, which moves into the
first turn's ``load_seconds`` and ``time_to_first_audio_s``. Stage factories run one at a time (they
share models through ``StageContext.resource``), so loading is not faster in total, only overlapped
with whatever the caller does before the first turn (reading input, transcribing while tts loads).
"""

from __future__ import annotations

from typing import Any, Mapping

from csm_core.records import Optimizer, StageContext


class ProgressiveLoading:
    """Switches ``Settings.loading`` to ``"progressive"``; has no options and no hooks."""

    def __init__(self, context: StageContext):
        self.context = context

    def configure(self, settings) -> Mapping[str, Any]:
        return {"loading": "progressive"}


OPTIMIZER = Optimizer(
    name="progressive-loading",
    factory=ProgressiveLoading,
    effect="exact",
    description="preload returns at once; stages load in a background thread, tts first when speaking text",
)
