"""Where the CSM and Mimi weights of a pipeline come from: a random preset, or files on disk.

Weights are looked for in this order: ``models.model_path``, ``models.model_dir``, the Hugging Face
cache for ``models.repo_id`` (offline: nothing is ever downloaded). ``models.preset`` builds random
weights of a preset size instead, with a byte-level text tokenizer, so everything runs offline.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from csm_core.config import ModelSources, Settings
from csm_core.errors import CsmError
from csm_model.checkpoints import (
    CheckpointError,
    CheckpointNotFound,
    detect_layout,
    find_checkpoint,
    load_checkpoint,
)
from csm_model.mimi import find_mimi, load_mimi, random_mimi
from csm_model.model import Csm
from csm_model.presets import build_preset, get_preset
from csm_model.text_tokenizer import TextTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRESET_SEED = 0
CODEC_PREFIX = "codec_model."


@dataclass
class CsmWeights:
    """A loaded CSM with its text tokenizer, and a description of where it came from (for logs)."""

    model: Csm
    tokenizer: TextTokenizer
    source: str


def dtype_problem(precision: str, device: str) -> str | None:
    """Why ``device`` cannot compute in ``precision`` ("fp32" | "fp16" | "bf16"), or None when it can.

    The CPU runs all three (fp16 matmuls may be slow there, but they are correct). On CUDA, bf16 needs
    compute capability 8.0 (Ampere) or newer.
    """
    if precision not in DTYPES:
        return f"precision {precision!r} is unknown; choose one of {', '.join(DTYPES)}"
    if precision == "bf16" and str(device).startswith("cuda"):
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        if major < 8:
            name = torch.cuda.get_device_name(index)
            return f"bf16 needs CUDA compute capability >= 8.0, and {name} ({device}) has {major}.{minor}"
    return None


def csm_part_dtypes(settings: Settings, device: str, report: Callable[[str], None] | None = None) -> dict[str, torch.dtype]:
    """``{"backbone": dtype, "decoder": dtype}``: the precision plan of the CSM transformer parts.

    Embeddings, heads (logits) and sampling always stay float32. A precision ``device`` cannot run is a
    :class:`~csm_core.errors.CsmError` naming the part and what to do, unless ``settings.allow_fallback``:
    then the part runs in fp32 and ``report`` (default: the ``csm`` logger) is told so.
    """
    plan = {}
    for part in ("backbone", "decoder"):
        precision = settings.precision_of(part)
        problem = dtype_problem(precision, device)
        if problem is not None:
            if not settings.allow_fallback:
                raise CsmError(
                    f"component_precision for the CSM {part} is {precision}, but {problem}: choose fp16 or fp32 "
                    f"(component_precision.{part} = \"fp16\"), or set allow_fallback = true to run it in fp32"
                )
            (report or logging.getLogger("csm").warning)(
                f"CSM {part}: {problem}; running it in fp32 as allow_fallback permits"
            )
            precision = "fp32"
        plan[part] = DTYPES[precision]
    return plan


def check_codec_precision(settings: Settings, backend: str) -> None:
    """For backends that run Mimi in float32 only: a reduced ``component_precision.codec`` is a
    :class:`~csm_core.errors.CsmError` naming ``backend``, never silently ignored."""
    precision = settings.precision_of("codec")
    if precision != "fp32":
        raise CsmError(
            f"component_precision.codec = {precision!r}: the {backend} backend runs the Mimi codec in fp32 only "
            "(its audio quality depends on it); remove the entry or set it to \"fp32\""
        )


def load_csm_weights(settings: Settings, device: str, report: Callable[[str], None] | None = None) -> CsmWeights:
    """The configured CSM on ``device``, its transformer parts in the precision plan of
    :func:`csm_part_dtypes` and everything else in float32."""
    plan = csm_part_dtypes(settings, device, report)
    weights = _load_fp32(settings, device)
    weights.model.set_part_dtypes(plan["backbone"], plan["decoder"])
    return weights


def _load_fp32(settings: Settings, device: str) -> CsmWeights:
    models: ModelSources = settings.models
    dtype = torch.float32
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
