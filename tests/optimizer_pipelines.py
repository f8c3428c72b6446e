"""Tiny-preset pipelines for the optimizer tests, with the in-tree plugins loaded through their entry
points (the path users take): ``model``, ``pytorch`` and ``optimizers``, plus whatever else a test names."""

from __future__ import annotations

from csm_core.config import Settings
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins


def tiny_pipeline(*extra_plugins: str, **settings) -> Pipeline:
    """A pipeline on the tiny preset, on CPU unless ``device`` is given; ``settings`` as for Settings."""
    settings.setdefault("models", {"preset": "tiny"})
    settings.setdefault("device", "cpu")
    load = ",".join(("model", "pytorch", "optimizers", *extra_plugins))
    return Pipeline(Settings(**settings), Plugins.from_environment({"CSM_LOAD_PLUGINS": load}))


def text_prompt(args, frames: int = 12, seed: int = 3):
    """A text-only prompt (tokens, mask) [1,T,K+1] of ``frames`` random byte tokens, for a CSM shaped by
    ``args``; the same for the same ``seed``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(1, frames, args.num_codebooks + 1, dtype=torch.long)
    tokens[..., -1] = torch.randint(0, 256, (1, frames), generator=gen)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[..., -1] = True
    return tokens, mask
