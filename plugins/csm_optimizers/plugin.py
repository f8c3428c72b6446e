"""Hooks of the in-tree optimizers plugin: registers the ``OPTIMIZER`` record of each module.

The modules import nothing heavy at import time (torch is imported inside the objects' methods), so
``csmctl plugins`` stays fast.
"""

from __future__ import annotations

import importlib

from csm_core import hookimpl

MODULES: tuple[str, ...] = (
    "cache_clearing",
    "selective_precision",
    "amortized_analysis",
    "context_window",
    "batched_generation",
    "profile_cache",
    "progressive_loading",
    "cuda_graphs",
    "weight_quantization",
    "pipelined_decoding",
    "fused_frame",
    "speculative_codebooks",
)


@hookimpl
def register_optimizers(register):
    for name in MODULES:
        register(importlib.import_module(f"csm_optimizers.{name}").OPTIMIZER)
