"""Where the CSM and Mimi weights of a pipeline come from: a random preset, or files on disk.

Weights are looked for in this order: ``models.model_path``, ``models.model_dir``, the Hugging Face
cache for ``models.repo_id`` (offline: nothing is ever downloaded). ``models.preset`` builds random
weights of a preset size instead, with a byte-level text tokenizer, so everything runs offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from csm_core.config import ModelSources, Settings
from csm_pytorch.checkpoints import (
    CheckpointError,
    CheckpointNotFound,
    detect_layout,
    find_checkpoint,
    load_checkpoint,
)
from csm_pytorch.mimi import find_mimi, load_mimi, random_mimi
from csm_pytorch.model import Csm
from csm_pytorch.presets import build_preset, get_preset
from csm_pytorch.text_tokenizer import TextTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRESET_SEED = 0
CODEC_PREFIX = "codec_model."


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


def codec_inside_checkpoint(directory: Path):
    """The Mimi model stored inside a transformers-layout CSM checkpoint (``codec_config`` in its
    config.json, ``codec_model.*`` tensors in its safetensors), or None when it holds none.

    Only the codec's tensors are read (``safe_open``), not the whole checkpoint again.
    """
    from safetensors import safe_open
    from transformers import MimiConfig, MimiModel

    config_file = directory / "config.json"
    if not config_file.is_file():
        return None
    codec_config = json.loads(config_file.read_text()).get("codec_config")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({directory / f for n, f in weight_map.items() if n.startswith(CODEC_PREFIX)})
    else:
        files = [directory / "model.safetensors"] if (directory / "model.safetensors").is_file() else []
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name.startswith(CODEC_PREFIX):
                    state[name[len(CODEC_PREFIX):]] = handle.get_tensor(name).clone()
    if not codec_config or not state:
        return None
    config = MimiConfig(**{k: v for k, v in codec_config.items() if k != "model_type"})
    try:  # from_pretrained maps the stored (original Mimi) names onto MimiModel's
        model, info = MimiModel.from_pretrained(None, config=config, state_dict=state, output_loading_info=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"the codec inside {directory} does not load: {exc}") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise CheckpointError(
            f"the codec inside {directory} does not match its codec_config "
            f"(missing: {sorted(info.get('missing_keys') or [])[:3]}, "
            f"mismatched: {sorted(info.get('mismatched_keys') or [])[:3]})"
        )
    return model.eval()


def load_mimi_model(settings: Settings, device: str):
    """The Mimi ``MimiModel`` (always fp32: the codec's audio quality depends on it).

    In order: the preset's random Mimi; ``models.mimi_path``; the codec stored inside the configured
    CSM checkpoint (transformers layout); the Hugging Face cache for ``models.mimi_repo_id``.
    """
    models = settings.models
    if models.preset:
        return random_mimi(get_preset(models.preset).mimi_preset, PRESET_SEED).to(device)
    if models.mimi_path is None:
        try:
            csm_source = find_checkpoint(models.model_path, models.model_dir, models.repo_id)
        except CheckpointNotFound:
            csm_source = None
        if csm_source is not None:
            inside = codec_inside_checkpoint(csm_source if csm_source.is_dir() else csm_source.parent)
            if inside is not None:
                return inside.to(device)
    return load_mimi(find_mimi(models.mimi_path, models.mimi_repo_id), device=device).model
