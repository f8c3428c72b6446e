"""``[options.csm]``: the settings of the ``csm`` TTS stage, read with :func:`csm_core.config.plugin_options`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CsmOptions(BaseModel):
    """``[options.csm]``: how the ``csm`` TTS stage runs its frame loop (on any backend)."""

    model_config = ConfigDict(extra="forbid")

    pipelined_decoding: bool = Field(
        False, description="generate frame t+1 on a thread while frame t is decoded to audio (identical output)"
    )
