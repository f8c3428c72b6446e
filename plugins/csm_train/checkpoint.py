"""Training checkpoints: written atomically, found again by ``--resume``.

``OUTPUT_DIR/checkpoints/step-00000050/`` holds everything needed to continue exactly where the run
was: ``trainable.safetensors`` (the weights that train: every weight, or the LoRA adapters only; the
frozen base is loaded again from the run's model source), ``optimizer.pt`` (AdamW's moments),
``rng-rank<N>.pt`` (each process's torch random state), and ``state.json`` (the step, how many samples
were drawn, Python's and NumPy's random states, and the settings the run was started with).

A checkpoint is written into a hidden temporary folder and renamed into place when complete
(``os.replace``), so a run killed while saving leaves the previous checkpoint as the latest one and no
half-written folder under a ``step-`` name. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from csm_core.errors import CsmError

from .distributed import Distributed

__all__ = ["CHECKPOINTS", "latest_checkpoint", "save_checkpoint", "load_checkpoint", "ResumeError"]

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


class ResumeError(CsmError):
    """``--resume`` cannot continue: no checkpoint, or one from a run with other settings."""


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        return None
    return int(name[len(PREFIX):]) if (path / "state.json").is_file() else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir``, or None."""
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [(step, p) for p in folder.iterdir() if (step := _step_of(p)) is not None]
    return max(found)[1] if found else None


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(
    output_dir: Path,
    step: int,
    dist: Distributed,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    position: int,
    identity: dict,
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` (every process calls this; rank 0 writes the shared files)."""
    from safetensors.torch import save_file

    folder = output_dir / CHECKPOINTS
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f"{TMP_PREFIX}{PREFIX}{step:08d}"
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    torch.save({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / f"rng-rank{dist.rank}.pt")
    dist.barrier()
    if dist.is_main:
        save_file({n: t.detach().to("cpu").contiguous() for n, t in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        numpy_state = np.random.get_state()
        state = {
            "step": step,
            "position": position,
            "world_size": dist.world_size,
            "identity": identity,
            "python_random": _jsonable(random.getstate()),
            "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *map(_plain, numpy_state[2:])],
        }
        (tmp / "state.json").write_text(json.dumps(state) + "\n", encoding="utf-8")
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(folder, keep)
    dist.barrier()
    return final


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _prune(folder: Path, keep: int) -> None:
    found = sorted((step, p) for p in folder.iterdir() if (step := _step_of(p)) is not None)
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in folder.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(
    path: Path,
    dist: Distributed,
    *,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    identity: dict,
) -> dict:
    """Restore ``path`` into the parameters, optimizer and random states; returns ``state.json``.

    Raises :class:`ResumeError` when the run's settings differ from the checkpoint's (naming each) or
    the trainable weights do not match (a LoRA checkpoint resumed with ``--full``, ...).
    """
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    changed = sorted(k for k in set(identity) | set(state["identity"]) if identity.get(k) != state["identity"].get(k))
    if changed:
        details = "; ".join(f"{k}: was {state['identity'].get(k)!r}, now {identity.get(k)!r}" for k in changed)
        raise ResumeError(
            f"cannot resume from {path}: the run was started with other settings ({details}); "
            "use the same settings, or start a new run in another --output-dir"
        )
    stored = load_file(str(path / "trainable.safetensors"))
    missing, unexpected = sorted(set(trainable) - set(stored)), sorted(set(stored) - set(trainable))
    if missing or unexpected:
        raise ResumeError(
            f"cannot resume from {path}: its trainable weights do not match this run's "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(stored[name].to(param.device, param.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=dist.device, weights_only=True))
    rng_file = path / f"rng-rank{dist.rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(_tupled(state["python_random"]))
    numpy_state = state["numpy_random"]
    np.random.set_state((numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    return state
