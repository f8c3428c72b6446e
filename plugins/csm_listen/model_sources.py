"""Where the listening models come from: a local directory, the Hugging Face cache, or a tiny preset.

``models.asr`` / ``models.llm`` name a model either as a local directory (``/models/whisper-small``,
``./my-llm``, ``~/m``) or as a Hub repo id (``openai/whisper-tiny``) looked up in the Hugging Face
cache, offline (:func:`csm_core.hf_cache.hf_cached_snapshot`): nothing is ever downloaded.
With ``models.preset`` set and the field empty, a random tiny model (see :mod:`csm_listen.tiny_models`)
is written once into ``<cache_dir>/presets/`` and used.

A model directory is one with ``config.json`` and weights (``model.safetensors``, a sharded index, or
``pytorch_model.bin``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from csm_core.errors import CsmError
from csm_core.hf_cache import hf_hub_cache_dir
from csm_core.hf_cache import hf_cached_snapshot

MODEL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Any one of these beside ``config.json`` makes a directory a model."""

Field = Literal["asr", "llm"]

_KINDS: dict[str, dict[str, str]] = {
    "asr": {"what": "Whisper speech-recognition model", "example": "openai/whisper-tiny", "tiny": "whisper"},
    "llm": {"what": "chat language model", "example": "Qwen/Qwen2.5-0.5B-Instruct", "tiny": "chat-lm"},
}
PRESET_SEED = 0
"""Seed of the random tiny preset models (fixed, so a preset is the same model everywhere)."""


class ModelNotFound(CsmError, FileNotFoundError):
    """No model where the config points; ``looked_at`` lists the places tried."""

    def __init__(self, message: str, looked_at: list[str]):
        super().__init__(message)
        self.looked_at = looked_at


class NotAModel(CsmError):
    """A directory that exists but holds no ``config.json`` + weights."""


def is_model_dir(directory: Path) -> bool:
    """Whether ``directory`` has ``config.json`` and one of :data:`MODEL_WEIGHT_FILES`."""
    return (directory / "config.json").is_file() and any((directory / n).is_file() for n in MODEL_WEIGHT_FILES)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1


def find_model_dir(source: str, field: Field) -> Path:
    """The model directory ``models.<field> = source`` names: a local directory or a cached repo id.

    Raises :class:`NotAModel` for a directory without config + weights and :class:`ModelNotFound`
    (listing where it looked and how to get the model) when there is nothing there.
    """
    kind = _KINDS[field]
    setting = f"models.{field}"
    if not source or not source.strip():
        raise CsmError(f"{setting} is empty: set it to a local {kind['what']} directory or a repo id like {kind['example']!r}")
    source = source.strip()
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotAModel(f"{setting} = {source!r} is a file, not a model directory: point it at the directory holding config.json")
        if not is_model_dir(local):
            present = sorted(p.name for p in local.iterdir())[:8]
            raise NotAModel(
                f"{setting} = {source!r} is not a {kind['what']} directory: it needs config.json and one of "
                f"{', '.join(MODEL_WEIGHT_FILES)} (found: {', '.join(present) or 'nothing'}). "
                "Point it at a directory written by save_pretrained or downloaded with huggingface-cli"
            )
        return local.resolve()
    looked_at = [f"local directory {str(local)!r} (does not exist)"]
    if not _looks_like_path(source):
        cache = hf_hub_cache_dir()
        snapshot = hf_cached_snapshot(source, cache, required=MODEL_WEIGHT_FILES)
        if snapshot is not None and is_model_dir(snapshot):
            return snapshot
        looked_at.append(
            f"Hugging Face cache {str(cache)!r} for repo {source!r}"
            + (f" (snapshot {str(snapshot)!r} has no config.json)" if snapshot is not None else " (not cached)")
        )
        fix = f"download it with `huggingface-cli download {source}` (then it is found offline)"
    else:
        fix = "fix the path"
    raise ModelNotFound(
        f"no {kind['what']} for {setting} = {source!r}; looked at: " + "; ".join(looked_at)
        + f". To fix: {fix}, or run with random weights: `--preset tiny`",
        looked_at,
    )


def resolve_model_dir(settings, field: Field) -> Path:
    """The directory of the model for ``field`` under ``settings`` (a :class:`csm_core.config.Settings`).

    ``models.<field>`` wins; else with ``models.preset`` the random tiny model (written once to
    ``<cache_dir>/presets/<tiny name>-tiny``); else a :class:`ModelNotFound` saying what to set.
    """
    kind = _KINDS[field]
    source = getattr(settings.models, field)
    if source:
        return find_model_dir(source, field)
    if settings.models.preset:
        from csm_listen.tiny_models import ensure_tiny_model

        directory = settings.resolved_cache_dir() / "presets" / f"{kind['tiny']}-tiny"
        return ensure_tiny_model(directory, kind["tiny"], seed=PRESET_SEED)
    raise ModelNotFound(
        f"no {kind['what']} configured: set models.{field} to a local directory or a cached repo id "
        f"(e.g. {kind['example']!r} after `huggingface-cli download {kind['example']}`), "
        "or run with random weights: `--preset tiny`",
        [],
    )


def torch_placement(context) -> tuple[str, "object"]:
    """``(device, torch dtype)`` for a stage's model from its :class:`~csm_core.records.StageContext`.

    The device follows ``settings.device`` (``auto`` -> CUDA when usable; a CUDA failure is an error
    unless ``allow_fallback``, which is reported). The dtype is ``component_precision[<stage>]``, else
    ``precision``; half precision on the CPU is not used: fp32 is, and that is reported.
    """
    import torch

    from csm_core.devices import resolve_device

    settings = context.settings
    device = resolve_device(settings.device, settings.allow_fallback, context.report)
    precision = settings.component_precision.get(context.stage, settings.precision)
    if device == "cpu" and precision != "fp32":
        context.report(f"{context.stage}: precision {precision} is not used on the CPU; running in fp32")
        precision = "fp32"
    return device, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_pretrained(directory: Path, device: str, dtype, preprocessor_class, model_class, what: str, hint: str):
    """``(preprocessor, model)`` from ``directory`` (local files only), the model on ``device`` in eval
    mode; a directory that does not load as ``what`` raises :class:`NotAModel` with ``hint`` (which
    setting to point where)."""
    try:
        preprocessor = preprocessor_class.from_pretrained(directory, local_files_only=True)
        model = model_class.from_pretrained(directory, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise NotAModel(f"{str(directory)!r} does not load as {what} ({type(exc).__name__}: {exc}); {hint}") from None
    return preprocessor, model.to(device).eval()
