"""The ``context-window`` optimizer: a smaller, prioritized context budget for CSM (cheaper prefill).

What it changes: only the context policy's settings, through ``configure``: ``context.budget_positions``
= ``[options.context-window] budget`` (positions for the context and the text to speak, default 1024)
and ``context.keep_text_of_dropped`` = its ``keep_text_of_dropped`` (default true: turns whose audio no
longer fits stay as text only); and ``generation.trim_context`` = true where it was switched off (the
policy always applies with the optimizer on). The policy itself lives in the core
(:mod:`csm_core.context_policy`), which the pipeline applies to every utterance, using the smaller of
that budget and the model's window minus the frames to generate.

Effect: approximate. When the conversation fits the budget the context, hence the codes, are identical
to the unoptimized run; when it does not, CSM conditions on less audio context.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from csm_core.config import Settings, plugin_options
from csm_core.records import Optimizer, StageContext

NAME = "context-window"


class ContextWindowOptions(BaseModel):
    """``[options.context-window]``: the budget (positions for context + the text to speak) and whether
    dropped turns keep their text."""

    model_config = ConfigDict(extra="forbid")

    budget: int = Field(1024, ge=1, description="positions for the context and the text to speak")
    keep_text_of_dropped: bool = Field(True, description="keep turns whose audio does not fit as text only")


class ContextWindow:
    """Validates ``[options.context-window]`` when the pipeline is built, before any model loads, and sets
    the context policy's budget from it."""

    def __init__(self, context: StageContext):
        self.options = plugin_options(context.settings, NAME, ContextWindowOptions)

    def configure(self, settings: Settings) -> Mapping[str, Any]:
        overrides: dict[str, Any] = {
            "context.budget_positions": self.options.budget,
            "context.keep_text_of_dropped": self.options.keep_text_of_dropped,
        }
        if not settings.generation.trim_context:
            overrides["generation.trim_context"] = True
        return overrides


OPTIMIZER = Optimizer(
    name=NAME,
    factory=ContextWindow,
    effect="approximate",
    description=(
        "prioritized CSM context within [options.context-window] budget positions (default 1024): current "
        "turn always, voice profile pinned, newest turns first, older ones as text only; identical codes "
        "whenever the conversation fits the budget"
    ),
)
