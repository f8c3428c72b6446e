"""The ``batched-generation`` optimizer: several utterances in one backbone/decoder batch.

What it changes: only ``generation.max_batch``, set through ``configure`` to ``[options.batched-generation]
max_batch`` (default 4). The work lives in the core and the tts stage: with ``generation.max_batch`` set,
:func:`csm_core.utterances.speak_many` hands the texts to :meth:`csm_core.pipeline.Pipeline.speak_batch`
that many at a time, which builds each text's request as ``speak`` does (voice profile, context policy,
emotion map) and speaks them through the tts stage's ``speak_batch`` (``CsmSpeaker.speak_batch``), which
runs the continuous-batching session the server uses (:mod:`csm_core.generation.batch_session`): each
text is prefilled into a row of its own, every frame step runs all rows at once, each row ends on its own
(end-of-speech frame, silence guard) and a waiting text takes the freed row at the next frame; each row's
frames are decoded by its own streaming Mimi state. Switched off, ``speak_many`` speaks the texts one by one.
Single utterances (``Pipeline.speak``/``turn``) are not affected either way. Only engines that can grow
their batch (``CsmEngines.for_batch``: the eager PyTorch engines) batch more than one row; other backends
raise a clear error.

Effect: **exact**: each row samples with its own parameters and its own seeded generator, so its codes
equal those of speaking it alone, under greedy decoding and under seeded sampling (asserted in
``tests/optimizers_plugin/test_batched_generation.py``). Audio agrees to float tolerance (batched kernels
may sum in another order).
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from csm_core.config import MAX_BATCH, plugin_options
from csm_core.records import Optimizer, StageContext

NAME = "batched-generation"


class BatchedGenerationOptions(BaseModel):
    """``[options.batched-generation]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(
        4, ge=1, le=MAX_BATCH, description="utterances generated together at most (rows of the KV caches)"
    )


class BatchedGeneration:
    """Sets ``generation.max_batch`` from ``[options.batched-generation]`` (validated when the pipeline
    starts); the batching is done by :func:`csm_core.utterances.speak_many` and the tts stage's
    ``speak_batch``."""

    def __init__(self, context: StageContext) -> None:
        self.options = plugin_options(context.settings, NAME, BatchedGenerationOptions)

    def configure(self, settings) -> Mapping[str, Any]:
        return {"generation.max_batch": self.options.max_batch}


OPTIMIZER = Optimizer(
    name=NAME,
    factory=BatchedGeneration,
    effect="exact",
    description="speak_many generates up to max_batch utterances together, a row each (per-row positions, "
    "parameters, seed and end of speech); exact under greedy and seeded sampling",
)
