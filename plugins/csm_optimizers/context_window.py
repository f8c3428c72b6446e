"""The ``context-window`` optimizer: a smaller, prioritized context budget for CSM (cheaper prefill).

The policy itself lives in the core (:mod:`csm_core.context_window`), which the pipeline applies to
every turn; with this optimizer enabled it uses ``[options.context-window] budget`` (positions for the
context and the text to speak, default 1024) instead of the model's whole window, and with
``keep_text_of_dropped`` (default true) keeps turns whose audio no longer fits as text only.

Effect: approximate. When the conversation fits the budget the context, hence the codes, are identical
to the unoptimized run; when it does not, CSM conditions on less audio context.
"""

from __future__ import annotations

from typing import Any, Mapping

from csm_core.config import Settings, plugin_options
from csm_core.context_window import OPTIMIZER_NAME, ContextWindowOptions
from csm_core.records import Optimizer, StageContext


class ContextWindow:
    """Validates ``[options.context-window]`` when the pipeline is built, before any model loads."""

    def __init__(self, context: StageContext):
        self.options = plugin_options(context.settings, OPTIMIZER_NAME, ContextWindowOptions)

    def configure(self, settings: Settings) -> Mapping[str, Any]:
        """No setting to change: the pipeline's context assembly reads the options while enabled."""
        return {}


OPTIMIZER = Optimizer(
    name=OPTIMIZER_NAME,
    factory=ContextWindow,
    effect="approximate",
    description=(
        "prioritized CSM context within [options.context-window] budget positions (default 1024): current "
        "turn always, voice profile pinned, newest turns first, older ones as text only; identical codes "
        "whenever the conversation fits the budget"
    ),
)
