"""Where the CSM and Mimi weights of a pipeline come from: a random preset, or files on disk.

Weights are looked for in this order: ``models.model_path``, ``models.model_dir``, the Hugging Face
cache for ``models.repo_id`` (offline: nothing is ever downloaded). ``models.preset`` builds random
weights of a preset size instead, with a byte-level text tokenizer, so everything runs offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_core.config import ModelSources, Settings
from csm_pytorch.checkpoints import CheckpointError, detect_layout, find_checkpoint, load_checkpoint
from csm_pytorch.mimi import find_mimi, load_mimi, random_mimi
from csm_pytorch.model import Csm
from csm_pytorch.presets import build_preset, get_preset
from csm_pytorch.text_tokenizer import TextTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRESET_SEED = 0


@dataclass
class CsmWeights:
    """A loaded CSM with its text tokenizer, and a description of where it came from (for logs)."""

    model: Csm
    tokenizer: TextTokenizer
    source: str


def csm_dtype(settings: Settings) -> torch.dtype:
    """The CSM transformer's dtype: ``component_precision["csm"]``, else ``precision``."""
    return DTYPES[settings.component_precision.get("csm", settings.precision)]


def load_csm_weights(settings: Settings, device: str) -> CsmWeights:
    models: ModelSources = settings.models
    dtype = csm_dtype(settings)
    if models.preset:
        model, tokenizer = build_preset(models.preset, PRESET_SEED, dtype=dtype, device=device)
        return CsmWeights(model, tokenizer, f"random weights of preset {models.preset!r}")
    path = find_checkpoint(model_path=models.model_path, model_dir=models.model_dir, repo_id=models.repo_id)
    if models.model_flavor is not None:
        layout = detect_layout(path)
        if layout != models.model_flavor:
            raise CheckpointError(
                f"--model-flavor {models.model_flavor!r} was asked for, but {path} holds a {layout!r} "
                "checkpoint: drop the flag or point --model-path at the other checkpoint"
            )
    loaded = load_checkpoint(path, device=device, dtype=dtype)
    return CsmWeights(loaded.model, loaded.tokenizer, f"{loaded.layout} checkpoint {loaded.source}")


def load_mimi_model(settings: Settings, device: str):
    """The Mimi ``MimiModel`` (always fp32: the codec's audio quality depends on it)."""
    models = settings.models
    if models.preset:
        return random_mimi(get_preset(models.preset).mimi_preset, PRESET_SEED).to(device)
    return load_mimi(find_mimi(models.mimi_path, models.mimi_repo_id), device=device).model
