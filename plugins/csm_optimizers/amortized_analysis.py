"""The ``amortized-analysis`` optimizer: estimate the user's pitch on a random 1/16 of the speech frames.

What it changes: the ``prosody`` sentiment stage's options, through ``configure``:
``options.prosody.amortize = true`` and ``options.prosody.sample_fraction`` (and, when given,
``min_sampled_frames``) from ``[options.amortized-analysis]``. The work lives in
:mod:`csm_listen.prosody`: YIN pitch tracking, the costly part of the analysis, runs on a stratified
random sample of the speech frames (seeded by ``options.prosody.seed``: same input, same result);
energy, speaking rate, pauses and clipping are still computed on every frame. The sentiment result
says ``amortized = True``.

Effect: approximate. Only ``f0_median_hz``, ``f0_std_semitones`` and ``voiced_ratio`` become
estimates. Bound (measured in :mod:`csm_listen.prosody` at 1/16 on espeak-ng speech, seeds 0..49):
median F0 within 10.5 % of the full analysis (mean 2.2 %), voiced ratio within 0.34 (mean 0.09);
F0 spread is noisy (up to 2 st) at 1/16. The quality gate here
(``tests/optimizers_plugin/test_amortized_analysis.py``) compares the stage with and without the
optimizer on the same clip over 20 seeds: median F0 within 12 % (mean within 4 %) and the energy
features identical. Time: about 6x less prosody time per clip (28 ms -> 4.7 ms for 8.4 s of speech
on one core, measured in :mod:`csm_listen.prosody`).

Risk: the emotion label can change when the clip sits near a boundary between two prototypes and
the pitch terms move it across; use a larger ``sample_fraction`` where pitch variation matters.

Out of scope: the *training-time* form of compute amortization (training CSM's depth decoder on a
random 1/16 of the frames, as Sesame did) belongs to the training issue, not to inference; this
optimizer is the analysis-time form only.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from csm_core.config import plugin_options
from csm_core.errors import ConfigError
from csm_core.records import Optimizer, StageContext

SENTIMENT_STAGE = "prosody"


class AmortizedAnalysisOptions(BaseModel):
    """``[options.amortized-analysis]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_fraction: float = Field(1 / 16, gt=0.0, le=1.0, description="fraction of speech frames pitch-tracked")
    min_sampled_frames: int | None = Field(
        None, ge=1, description="floor on the sampled frame count; default: the prosody stage's own (8)"
    )


class AmortizedAnalysis:
    """Sets the prosody stage's amortization options; has no hooks."""

    def __init__(self, context: StageContext):
        self.options: AmortizedAnalysisOptions = plugin_options(
            context.settings, "amortized-analysis", AmortizedAnalysisOptions
        )

    def configure(self, settings) -> Mapping[str, Any]:
        if settings.stages.sentiment != SENTIMENT_STAGE:
            raise ConfigError(
                f"optimizer 'amortized-analysis' amortizes the {SENTIMENT_STAGE!r} sentiment stage, but "
                f"stages.sentiment = {settings.stages.sentiment!r}: select {SENTIMENT_STAGE!r} or remove "
                "the optimizer"
            )
        overrides: dict[str, Any] = {
            f"options.{SENTIMENT_STAGE}.amortize": True,
            f"options.{SENTIMENT_STAGE}.sample_fraction": self.options.sample_fraction,
        }
        if self.options.min_sampled_frames is not None:
            overrides[f"options.{SENTIMENT_STAGE}.min_sampled_frames"] = self.options.min_sampled_frames
        return overrides


OPTIMIZER = Optimizer(
    name="amortized-analysis",
    factory=AmortizedAnalysis,
    effect="approximate",
    description="pitch of the user's speech from a random 1/16 of its frames: median F0 within ~10 %",
)
