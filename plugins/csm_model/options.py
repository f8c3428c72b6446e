"""``[options.csm]``: the settings of the ``csm`` TTS stage, read with :func:`csm_core.config.plugin_options`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CsmOptions(BaseModel):
    """``[options.csm]``: how the ``csm`` TTS stage runs its frame loop (on any backend)."""

    model_config = ConfigDict(extra="forbid")

    pipelined_decoding: bool = Field(
        False, description="decode frame t to audio on a worker while frame t+1 is generated (identical output)"
    )
    decoding_worker: Literal["auto", "thread", "process"] = Field(
        "auto",
        description="the worker of pipelined decoding: a thread, or a process (CPU only); auto: a process for "
        "PyTorch's Mimi on a CPU (its Python would hold the GIL against the frame loop's), a thread otherwise",
    )
