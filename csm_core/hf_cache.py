"""Where the Hugging Face hub cache is: read-only lookups, never a download."""

from __future__ import annotations

import os
from pathlib import Path


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` resolves it, read from the environment *now*.

    ``HF_HUB_CACHE``, else the older ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hf_cached_snapshot(
    repo_id: str, hf_cache: str | Path | None = None, *, required: tuple[str, ...]
) -> Path | None:
    """A snapshot directory of ``repo_id`` in the Hugging Face cache that holds one of ``required``.

    The snapshot that ``refs/main`` names first (found with ``huggingface_hub.try_to_load_from_cache``),
    then any other snapshot, newest first (a cache filled with ``--revision`` has no ``refs/main``).
    Offline only: never downloads. ``None`` when there is none.
    """
    from huggingface_hub import try_to_load_from_cache

    cache = Path(hf_cache).expanduser() if hf_cache is not None else hf_hub_cache_dir()
    for filename in required:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(found, str):
            return Path(found).parent
    snapshots = hf_repo_folder(repo_id, cache) / "snapshots"
    if snapshots.is_dir():
        for snapshot in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            if any((snapshot / name).is_file() for name in required):
                return snapshot
    return None


def hf_repo_folder(repo_id: str, cache: Path) -> Path:
    """The cache's folder of ``repo_id``: ``models--owner--name``."""
    return cache / ("models--" + repo_id.replace("/", "--"))
