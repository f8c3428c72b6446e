"""The on-disk cache of built TensorRT engines: keyed by everything that makes an engine invalid.

Layout under ``<cache_dir>/tensorrt``: ``<component>-<key>.engine`` (the serialized engine) and
``<component>-<key>.json`` (its sidecar: the key, the fields hashed into it, the engine's sha256 and
size). Both are written to a temporary file in the same folder and renamed into place, engine first,
sidecar last: an engine is loadable only when its sidecar exists and the engine's bytes hash to the
sidecar's ``engine_sha256``, so an interrupted write or a damaged file is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from csm_core.files import file_sha256, write_atomic  # noqa: F401  (re-exported: tests and artifacts use them here)

SIDECAR_VERSION = 1


def onnx_sha256(path: str | os.PathLike) -> str:
    """Hash of an ONNX graph file and its external-data files (``<path>.data`` / ``*.onnx_data`` beside it)."""
    path = Path(path)
    digest = hashlib.sha256(file_sha256(path).encode())
    for extra in sorted(path.parent.glob(path.name + ".data")) + sorted(path.parent.glob(path.stem + "*.onnx_data")):
        digest.update(extra.name.encode() + file_sha256(extra).encode())
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-able and order-independent: mappings sorted by key, tuples as lists, sets sorted."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"engine cache key fields must be JSON-like, got {type(value).__name__}: {value!r}")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``profiles`` maps input -> (min, opt, max) shapes."""

    onnx_sha256: str
    export_settings: Mapping[str, Any]
    tensorrt_version: str
    cuda_version: str
    gpu_name: str
    compute_capability: str
    precision: Mapping[str, Any]
    profiles: Mapping[str, Any]
    builder: Mapping[str, Any] = field(default_factory=dict)  # e.g. the workspace limit

    def fields(self) -> dict[str, Any]:
        return _canonical(asdict(self))

    def digest(self) -> str:
        """Hex sha256 over the canonical JSON of :meth:`fields`."""
        text = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class EngineCache:
    """Engines for components, under ``root`` (``<cache_dir>/tensorrt``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def paths(self, component: str, key: EngineKey) -> tuple[Path, Path]:
        """(engine path, sidecar path) for ``component`` built under ``key``."""
        stem = f"{component}-{key.digest()}"
        return self.root / f"{stem}.engine", self.root / f"{stem}.json"

    def load(self, component: str, key: EngineKey, report: Callable[[str], None]) -> bytes | None:
        """The cached engine's bytes, or ``None`` (after ``report`` saying why) when it must be built."""
        engine_path, sidecar_path = self.paths(component, key)
        if not engine_path.exists():
            stale = self.stale_fields(component, key)
            if stale:
                report(
                    f"tensorrt: building the {component} engine: the cached one was built for another "
                    f"{', '.join(stale)}"
                )
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except FileNotFoundError:
            report(f"tensorrt: rebuilding the {component} engine: {engine_path.name} has no sidecar (an interrupted write)")
            return None
        except (OSError, ValueError) as exc:
            report(f"tensorrt: rebuilding the {component} engine: its sidecar {sidecar_path.name} is unreadable ({exc})")
            return None
        if sidecar.get("key") != key.digest() or sidecar.get("fields") != key.fields():
            report(f"tensorrt: rebuilding the {component} engine: its sidecar does not match the requested build")
            return None
        data = engine_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sidecar.get("engine_sha256") or len(data) != sidecar.get("engine_bytes"):
            report(f"tensorrt: rebuilding the {component} engine: {engine_path.name} is corrupt (its sha256 differs from the sidecar's)")
            return None
        return data

    def store(self, component: str, key: EngineKey, engine: bytes) -> Path:
        """Write ``engine`` and then its sidecar, each atomically; returns the engine path."""
        engine = bytes(engine)  # IHostMemory and other buffers
        engine_path, sidecar_path = self.paths(component, key)
        sidecar_path.unlink(missing_ok=True)  # an engine without a valid sidecar is never loaded
        write_atomic(engine_path, engine)
        sidecar = {
            "sidecar_version": SIDECAR_VERSION,
            "component": component,
            "key": key.digest(),
            "fields": key.fields(),
            "engine_sha256": hashlib.sha256(engine).hexdigest(),
            "engine_bytes": len(engine),
        }
        write_atomic(sidecar_path, json.dumps(sidecar, indent=2, sort_keys=True).encode())
        return engine_path

    def stale_fields(self, component: str, key: EngineKey) -> list[str]:
        """Names of the key fields in which the newest other cached ``component`` engine differs."""
        wanted = key.fields()
        sidecars = sorted(self.root.glob(f"{component}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in sidecars:
            try:
                old = json.loads(path.read_text()).get("fields", {})
            except (OSError, ValueError):
                continue
            if old.get("onnx_sha256") is None:
                continue
            return sorted(name for name in wanted if old.get(name) != wanted[name])
        return []
