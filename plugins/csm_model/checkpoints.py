"""CSM weights on disk: find a checkpoint, tell its layout, load it into a :class:`~csm_model.model.Csm`.

Three layouts load (see :func:`detect_layout`):

``transformers``
    What ``CsmForConditionalGeneration.save_pretrained`` writes (today's ``sesame/csm-1b`` on the Hub):
    ``config.json`` with ``"model_type": "csm"``, ``model.safetensors`` or shards listed in
    ``model.safetensors.index.json`` (the Mimi ``codec_model.*`` tensors in it are not CSM's and are
    skipped), ``tokenizer.json``.
``sesame``
    Sesame's ``PyTorchModelHubMixin`` save: ``config.json`` with ``backbone_flavor``/``decoder_flavor``/
    ``text_vocab_size``/``audio_vocab_size``/``audio_num_codebooks`` and ``model.safetensors`` with the
    names of Sesame's ``models.py``.
``sesame-ckpt``
    The first ``sesame/csm-1b`` release: ``ckpt.pt``, a ``torch.save`` of the Sesame-named state dict.
    Read only with ``torch.load(weights_only=True)``. Without a ``config.json`` beside it the CSM-1B
    dimensions are assumed (as Sesame's ``load_csm_1b`` does); the shape check then names any tensor
    that disagrees.

The text tokenizer is ``tokenizer.json`` in the checkpoint directory; a Sesame-layout directory
without one borrows the Llama-3.2 tokenizer from the Hugging Face cache (``meta-llama/Llama-3.2-1B``),
which is what Sesame's generator uses. Nothing here downloads anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import torch

from csm_core.errors import CsmError
from csm_core.hf_cache import hf_cached_snapshot, hf_hub_cache_dir, hf_repo_folder
from csm_model.convert import (
    StateDictMismatch,
    args_from_sesame_config,
    args_from_transformers_config,
    from_sesame_state_dict,
    from_transformers_state_dict,
)
from csm_model.model import Csm, CsmArgs
from csm_model.text_tokenizer import TOKENIZER_FILE, LlamaTextTokenizer, TextTokenizer, TextTokenizerError

__all__ = [
    "CheckpointError",
    "CheckpointNotFound",
    "CorruptCheckpoint",
    "LoadedCheckpoint",
    "UnknownLayout",
    "WeightMismatch",
    "detect_layout",
    "find_checkpoint",
    "hf_cached_snapshot",
    "hf_hub_cache_dir",
    "load_checkpoint",
    "load_text_tokenizer",
    "read_args",
    "read_state_dict",
]

Layout = Literal["transformers", "sesame", "sesame-ckpt"]
LAYOUTS: tuple[Layout, ...] = ("transformers", "sesame", "sesame-ckpt")

DEFAULT_REPO_ID = "sesame/csm-1b"
LLAMA_TOKENIZER_REPO_ID = "meta-llama/Llama-3.2-1B"
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
CKPT_FILE = "ckpt.pt"
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, CKPT_FILE)

HOW_TO_GET_WEIGHTS = (
    "To get the real weights, accept the licence at https://huggingface.co/sesame/csm-1b and run "
    "`huggingface-cli download sesame/csm-1b`; to run without them, use random weights: `--preset tiny`."
)


class CheckpointError(CsmError):
    """A checkpoint cannot be found or loaded. The message names the file and what to do."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint at any of the places looked at (listed in the message and in ``looked_at``)."""

    def __init__(self, message: str, looked_at: list[str]):
        super().__init__(message)
        self.looked_at = looked_at


class UnknownLayout(CheckpointError):
    """The files present match none of the known layouts, or ``config.json`` is not a CSM config."""


class CorruptCheckpoint(CheckpointError):
    """A weights file is truncated or unreadable (re-download it)."""


class WeightMismatch(CheckpointError):
    """The tensors in the file do not fit the model its config describes: missing, extra or mis-shaped."""


@dataclass
class LoadedCheckpoint:
    """A model loaded from disk, with what was used to build it."""

    model: Csm  # in eval mode, no caches allocated
    args: CsmArgs
    tokenizer: TextTokenizer
    layout: Layout
    source: Path  # the checkpoint directory or file that was read


# --------------------------------------------------------------------------------------------------
# Discovery


def _holds_weights(directory: Path) -> bool:
    return directory.is_dir() and any((directory / name).is_file() for name in WEIGHT_FILES)


def find_checkpoint(
    model_path: str | Path | None = None,
    model_dir: str | Path | None = None,
    repo_id: str = DEFAULT_REPO_ID,
    hf_cache: str | Path | None = None,
) -> Path:
    """Where the CSM weights are, looked for in this order:

    1. ``model_path``: a checkpoint directory, or a weights file in one. Given explicitly, it must
       exist: a wrong path raises at once rather than falling through to another checkpoint.
    2. ``model_dir`` (the configured model directory): the directory itself if it holds weights, else
       ``model_dir/<repo name>`` (``csm-1b``), else ``model_dir/<owner>/<repo name>``.
    3. The Hugging Face cache (``hf_cache``, default :func:`hf_hub_cache_dir`): the snapshot that
       ``refs/main`` of ``repo_id`` points to, else another snapshot of it (:func:`hf_cached_snapshot`).

    Returns the directory (or the file, when ``model_path`` named a file). Raises
    :class:`CheckpointNotFound` listing every place looked at and how to get the weights.
    """
    looked_at: list[str] = []
    if model_path is not None:
        path = Path(model_path).expanduser()
        if path.is_file() or _holds_weights(path):
            return path
        what = "does not exist" if not path.exists() else f"holds none of {', '.join(WEIGHT_FILES)}"
        raise CheckpointNotFound(
            f"model path {path} {what}. Point it at a CSM checkpoint directory (or a weights file in one). "
            + HOW_TO_GET_WEIGHTS,
            [str(path)],
        )
    if model_dir is not None:
        base = Path(model_dir).expanduser()
        for candidate in (base, base / repo_id.split("/")[-1], base / repo_id):
            looked_at.append(f"model directory {candidate}")
            if _holds_weights(candidate):
                return candidate
    cache = Path(hf_cache).expanduser() if hf_cache is not None else hf_hub_cache_dir()
    looked_at.append(f"Hugging Face cache {hf_repo_folder(repo_id, cache)} (snapshot of refs/main, then any other)")
    snapshot = hf_cached_snapshot(repo_id, cache, required=WEIGHT_FILES)
    if snapshot is not None:
        return snapshot
    places = "\n".join(f"  - {place}" for place in looked_at)
    raise CheckpointNotFound(
        f"no CSM checkpoint ({', '.join(WEIGHT_FILES)}) found for {repo_id}. Looked at:\n{places}\n" + HOW_TO_GET_WEIGHTS,
        looked_at,
    )


# --------------------------------------------------------------------------------------------------
# Layout


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnknownLayout(f"{file} is not readable JSON ({exc}); re-download it") from exc
    if not isinstance(data, dict):
        raise UnknownLayout(f"{file} holds a JSON {type(data).__name__}, not an object; re-download it")
    return data


def _split(path: str | Path) -> tuple[Path, Path | None]:
    """``path`` -> (checkpoint directory, the weights file named, if a file was named)."""
    path = Path(path)
    if path.is_file():
        return path.parent, path
    if path.is_dir():
        return path, None
    raise CheckpointNotFound(f"checkpoint path {path} does not exist", [str(path)])


def detect_layout(path: str | Path) -> Layout:
    """``"transformers"``, ``"sesame"`` or ``"sesame-ckpt"`` from the files in ``path`` and ``config.json``.

    ``path`` is a checkpoint directory or a weights file in one. Raises :class:`UnknownLayout` (config
    of another model, or unknown keys) or :class:`CheckpointError` (no weights file).
    """
    directory, file = _split(path)
    if file is not None and file.name not in WEIGHT_FILES and file.suffix not in (".safetensors", ".pt", ".pth"):
        raise UnknownLayout(f"{file} is not a CSM weights file: expected one of {', '.join(WEIGHT_FILES)}")
    if file is not None and file.suffix in (".pt", ".pth"):
        return "sesame-ckpt"
    has_safetensors = file is not None or any((directory / n).is_file() for n in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE))
    if not has_safetensors:
        if (directory / CKPT_FILE).is_file():
            return "sesame-ckpt"
        present = sorted(p.name for p in directory.iterdir())[:12] if directory.is_dir() else []
        raise CheckpointError(
            f"no weights in {directory}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {CKPT_FILE}, "
            f"found {present or 'nothing'}. " + HOW_TO_GET_WEIGHTS
        )
    config_file = directory / CONFIG_FILE
    if not config_file.is_file():
        raise UnknownLayout(
            f"{directory} holds safetensors weights but no {CONFIG_FILE}: cannot tell the transformers layout "
            f"(model_type 'csm') from Sesame's (backbone_flavor ...); restore config.json from the checkpoint's source"
        )
    return _layout_of_config(_read_json(config_file), config_file)


def _layout_of_config(config: Mapping, config_file: Path) -> Layout:
    if "model_type" in config:
        if config["model_type"] == "csm":
            return "transformers"
        raise UnknownLayout(
            f"{config_file} describes a {config['model_type']!r} model, not CSM (model_type 'csm'): "
            f"point the model path at a CSM checkpoint"
        )
    if "backbone_flavor" in config and "decoder_flavor" in config:
        return "sesame"
    raise UnknownLayout(
        f"{config_file} is neither a transformers CSM config (model_type 'csm') nor a Sesame one "
        f"(backbone_flavor, decoder_flavor, ...); its keys are {sorted(config)[:12]}"
    )


# --------------------------------------------------------------------------------------------------
# Reading tensors


def read_safetensors(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of one ``.safetensors`` file. Raises :class:`CorruptCheckpoint` naming the file."""
    from safetensors.torch import load_file

    if not file.is_file():
        raise CheckpointError(f"weights file {file} is missing; re-download the checkpoint")
    try:
        return load_file(str(file), device=str(device))
    except Exception as exc:  # SafetensorError, OSError, ... : every failure here means a bad file
        raise CorruptCheckpoint(
            f"{file} is truncated or corrupt ({type(exc).__name__}: {exc}); delete it and re-download the checkpoint"
        ) from exc


def read_sharded_safetensors(index_file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors listed in a ``model.safetensors.index.json`` (``weight_map``: name -> shard file)."""
    index = _read_json(index_file)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpoint(f"{index_file} has no 'weight_map' of tensor name -> shard file; re-download it")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_tensors = read_safetensors(index_file.parent / shard, device)
        wanted = [name for name, where in weight_map.items() if where == shard]
        absent = [name for name in wanted if name not in shard_tensors]
        if absent:
            raise CorruptCheckpoint(
                f"{index_file.parent / shard} lacks {len(absent)} tensors that {index_file.name} places there "
                f"(first: {absent[:3]}); re-download the checkpoint"
            )
        tensors.update({name: shard_tensors[name] for name in wanted})
    return tensors


def read_torch_checkpoint(file: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``-d state dict, read with ``weights_only=True`` (no arbitrary code is unpickled)."""
    import pickle

    try:
        data = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CorruptCheckpoint(
            f"{file} holds objects other than tensors, which are not loaded (weights_only=True): "
            f"{str(exc).splitlines()[0]}. Convert it to a plain state dict or use model.safetensors"
        ) from exc
    except Exception as exc:  # RuntimeError from a truncated zip archive, EOFError, ...
        raise CorruptCheckpoint(
            f"{file} is truncated or corrupt ({type(exc).__name__}: {exc}); delete it and re-download the checkpoint"
        ) from exc
    if isinstance(data, dict) and set(data) == {"model"} and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise CorruptCheckpoint(f"{file} is not a state dict (a mapping of tensor names to tensors)")
    return data


# --------------------------------------------------------------------------------------------------
# Loading


def read_args(path: str | Path, layout: Layout | None = None) -> CsmArgs:
    """The :class:`CsmArgs` of the checkpoint at ``path`` (from ``config.json``; see the module docstring)."""
    directory, _ = _split(path)
    layout = layout or detect_layout(path)
    config_file = directory / CONFIG_FILE
    if layout == "sesame-ckpt" and not config_file.is_file():
        return CsmArgs()  # the first release shipped ckpt.pt alone; Sesame's load_csm_1b hard-codes CSM-1B
    config = _read_json(config_file)
    try:
        if layout == "transformers":
            from transformers import CsmConfig

            return args_from_transformers_config(CsmConfig.from_dict(config))
        if _layout_of_config(config, config_file) != "sesame":
            raise ValueError("a ckpt.pt needs a Sesame config.json (backbone_flavor, decoder_flavor, ...) beside it")
        return args_from_sesame_config(config)
    except CheckpointError:
        raise
    except Exception as exc:  # ValueError from convert, StrictDataclassFieldValidationError, TypeError ...
        raise UnknownLayout(f"{config_file} is not a usable {layout} CSM config: {exc}") from exc


def read_state_dict(path: str | Path, layout: Layout | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of the checkpoint at ``path`` as stored (layout's own names) and the file they came from."""
    directory, file = _split(path)
    layout = layout or detect_layout(path)
    if layout == "sesame-ckpt":
        file = file or directory / CKPT_FILE
        return read_torch_checkpoint(file), file
    if file is None:
        index = directory / SAFETENSORS_INDEX_FILE
        file = directory / SAFETENSORS_FILE if (directory / SAFETENSORS_FILE).is_file() else index
    if file.name.endswith(".index.json"):
        return read_sharded_safetensors(file), file
    return read_safetensors(file), file


def load_text_tokenizer(path: str | Path, hf_cache: str | Path | None = None) -> LlamaTextTokenizer:
    """``tokenizer.json`` of the checkpoint directory, else the cached ``meta-llama/Llama-3.2-1B`` one.

    Sesame's layouts ship no tokenizer (its generator uses Llama-3.2-1B's); nothing is downloaded.
    """
    directory, _ = _split(path)
    source = directory
    if not (directory / TOKENIZER_FILE).is_file():
        snapshot = hf_cached_snapshot(LLAMA_TOKENIZER_REPO_ID, hf_cache, required=(TOKENIZER_FILE,))
        if snapshot is None:
            cache = Path(hf_cache) if hf_cache is not None else hf_hub_cache_dir()
            raise CheckpointError(
                f"no text tokenizer: {directory} has no {TOKENIZER_FILE} and the Hugging Face cache "
                f"{hf_repo_folder(LLAMA_TOKENIZER_REPO_ID, cache)} has none either. CSM uses the Llama-3.2 "
                f"tokenizer: accept its licence at https://huggingface.co/{LLAMA_TOKENIZER_REPO_ID} and run "
                f"`huggingface-cli download {LLAMA_TOKENIZER_REPO_ID} tokenizer.json tokenizer_config.json`, "
                f"or copy its tokenizer.json into {directory}"
            )
        source = snapshot
    try:
        return LlamaTextTokenizer.from_dir(source)
    except TextTokenizerError as exc:
        raise CheckpointError(str(exc)) from exc


_ALIGNMENT = 64  # bytes; what PyTorch's CPU allocator guarantees


def _mismatch_message(file: Path, directory: Path, exc: StateDictMismatch, limit: int = 8) -> str:
    """A short :class:`WeightMismatch` message: the first ``limit`` tensors of each kind, and counts."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")

    lines = [f"{file} does not match the model that its config describes:"]
    if exc.wrong_shape:
        lines.append(f"  {len(exc.wrong_shape)} tensors of the wrong shape:")
        lines += [f"    {name} expected {tuple(want)}, found {tuple(got)}" for name, want, got in exc.wrong_shape[:limit]]
        if len(exc.wrong_shape) > limit:
            lines.append(f"    ... ({len(exc.wrong_shape) - limit} more)")
    if exc.missing:
        lines.append(f"  {len(exc.missing)} tensors missing: {some(exc.missing)}")
    if exc.unexpected:
        lines.append(f"  {len(exc.unexpected)} unexpected tensors: {some(exc.unexpected)}")
    config = directory / CONFIG_FILE
    if config.is_file():
        lines.append(f"Check that {config} belongs to these weights, or re-download the checkpoint.")
    else:
        lines.append(f"There is no {config}, so CSM-1B's dimensions were assumed; add the config that came with the weights.")
    return "\n".join(lines)


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    hf_cache: str | Path | None = None,
) -> LoadedCheckpoint:
    """Load the checkpoint at ``path`` (a directory, or a weights file in one) into a :class:`Csm`.

    ``dtype`` None keeps the stored dtype. The model is built on the meta device and takes the stored
    tensors by assignment, so no memory goes to a random init. Raises a :class:`CheckpointError`
    subclass naming the file for an unknown layout or config, a corrupt or truncated file, missing,
    unexpected or wrong-shaped tensors, or a missing / too large text tokenizer.
    """
    layout = detect_layout(path)
    directory, _ = _split(path)
    args = read_args(path, layout)
    stored, file = read_state_dict(path, layout)
    try:
        if layout == "transformers":
            state = from_transformers_state_dict(stored, args)
        else:
            state = from_sesame_state_dict(stored, args)
    except StateDictMismatch as exc:
        raise WeightMismatch(_mismatch_message(file, directory, exc)) from exc
    except ValueError as exc:  # e.g. untied codebook embeddings
        raise WeightMismatch(f"{file}: {exc}") from exc
    del stored
    with torch.device("meta"):
        model = Csm(args)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for param in model.parameters():
            # Tensors read from a file may sit at any byte offset; kernels take other (SIMD) paths for
            # unaligned data and give results that differ in the last bits. Own, aligned storage
            # makes a loaded model compute exactly what the same weights built in memory compute.
            if param.data_ptr() % _ALIGNMENT:
                param.data = param.data.clone()
    tokenizer = load_text_tokenizer(directory, hf_cache)
    try:
        tokenizer.check_fits(args.text_vocab_size)
    except TextTokenizerError as exc:
        raise CheckpointError(str(exc)) from exc
    return LoadedCheckpoint(model=model, args=args, tokenizer=tokenizer, layout=layout, source=Path(path))
