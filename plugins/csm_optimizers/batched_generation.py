"""The ``batched-generation`` optimizer: several utterances in one backbone/decoder batch.

Switched on, :func:`csm_core.batched.speak_many` hands the tts stage up to
``[options.batched-generation] max_batch`` (default 4) utterances at a time through
``CsmSpeaker.speak_batch``: their prompts are left-padded into one batch with per-row positions
(:mod:`csm_core.generation.batch`), every frame step runs all rows at once, each row ends on its own
(end-of-speech frame, silence guard) and is decoded by a batched streaming Mimi state. Switched off,
``speak_many`` speaks the texts one by one. Single utterances (``Pipeline.speak``/``turn``) are not
affected either way. Only the eager PyTorch engines can batch here; other backends raise a clear error.

Effect: **exact under greedy decoding**: each row's codes equal those of speaking it alone (same
weights; asserted in ``tests/optimizers_plugin/test_batched_generation.py``). Audio agrees to float
tolerance (batched convolution kernels may sum in another order). **Not exact with sampling**: one
random generator draws for the whole batch, so a row's codes depend on which rows share its batch and
in which order; a batch is reproducible for the same texts, order and seed, and every row is still a
draw from the same distribution, but it is not the draw that speaking it alone with that seed gives.
"""

from __future__ import annotations

from csm_core.batched import OPTIMIZER_NAME, BatchedGenerationOptions
from csm_core.config import plugin_options
from csm_core.records import Optimizer, StageContext


class BatchedGeneration:
    """Validates ``[options.batched-generation]`` when the pipeline starts; the batching is done by
    :func:`csm_core.batched.speak_many` and the tts stage's ``speak_batch``."""

    def __init__(self, context: StageContext) -> None:
        self.options = plugin_options(context.settings, OPTIMIZER_NAME, BatchedGenerationOptions)


OPTIMIZER = Optimizer(
    name=OPTIMIZER_NAME,
    factory=BatchedGeneration,
    effect="exact",
    description="speak_many generates up to max_batch utterances in one batch (ragged prompts left-padded, "
    "per-row end of speech); exact under greedy decoding, with sampling rows share one random generator",
)
