"""The on-disk caches of the TensorRT backend: built engines, keyed by everything that makes an engine
invalid, and the builder's timing caches. Both are verified on load (:mod:`csm_core.artifact_check`).

Layout under ``<cache_dir>/tensorrt``: ``<component>-<key>.engine`` (the serialized engine),
``<component>-<key>.engine.sha256`` (its checksum file) and ``<component>-<key>.json`` (its record: the
key and the fields hashed into it, read to name what changed when another build is asked for). A store
removes the record, writes the engine and then its checksum file, and the record last, each atomically:
an engine is loaded only when its record matches the requested key and its bytes hash to the checksum
file's, so an interrupted write or a damaged, truncated or unsealed engine is reported and rebuilt,
never loaded. A timing cache (``timing-<gpu>.cache``) gets a checksum file after each build; one that
does not verify is reported and removed before a build, which then starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from csm_core.artifact_check import ArtifactMismatch, checksum_path, discard, problem_with, read_verified, seal, store
from csm_core.files import file_sha256, write_atomic  # noqa: F401  (re-exported: tests and the builder use them here)

RECORD_VERSION = 2  # 1 kept the engine's sha256 in the record; the checksum file holds it now


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
        """(engine path, record path) for ``component`` built under ``key``; the engine's checksum file
        is :func:`csm_core.artifact_check.checksum_path` of the engine path."""
        stem = f"{component}-{key.digest()}"
        return self.root / f"{stem}.engine", self.root / f"{stem}.json"

    def load(self, component: str, key: EngineKey, report: Callable[[str], None]) -> bytes | None:
        """The cached engine's bytes (read and hashed once), or ``None`` (after ``report`` saying why)
        when it must be built."""
        engine_path, record_path = self.paths(component, key)
        if not engine_path.exists() and not checksum_path(engine_path).exists():
            stale = self.stale_fields(component, key)
            if stale:
                report(
                    f"tensorrt: building the {component} engine: the cached one was built for another "
                    f"{', '.join(stale)}"
                )
            return None
        problem = _record_problem(record_path, component, key)
        if problem is None:
            try:
                return read_verified(engine_path)
            except ArtifactMismatch as exc:
                problem = f"{engine_path.name}: {exc}"
        report(f"tensorrt: rebuilding the {component} engine: {problem}")
        return None

    def store(self, component: str, key: EngineKey, engine: bytes) -> Path:
        """Write ``engine``, its checksum file and then its record, each atomically; returns the engine path."""
        engine = bytes(engine)  # IHostMemory and other buffers
        engine_path, record_path = self.paths(component, key)
        record_path.unlink(missing_ok=True)  # an engine without a valid record is never loaded
        store(engine_path, engine)
        record = {
            "record_version": RECORD_VERSION,
            "component": component,
            "key": key.digest(),
            "fields": key.fields(),
            "engine_bytes": len(engine),
        }
        write_atomic(record_path, json.dumps(record, indent=2, sort_keys=True).encode())
        return engine_path

    def stale_fields(self, component: str, key: EngineKey) -> list[str]:
        """Names of the key fields in which the newest other cached ``component`` engine differs."""
        wanted = key.fields()
        records = sorted(self.root.glob(f"{component}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in records:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            old = old.get("fields") if isinstance(old, dict) else None
            if not isinstance(old, dict) or old.get("onnx_sha256") is None:
                continue
            return sorted(name for name in wanted if old.get(name) != wanted[name])
        return []


def _record_problem(record_path: Path, component: str, key: EngineKey) -> str | None:
    """Why the engine's record does not vouch for a build of ``component`` under ``key``, or None."""
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        return f"its record {record_path.name} is missing (an interrupted write)"
    except (OSError, ValueError) as exc:
        return f"its record {record_path.name} is unreadable ({exc})"
    if not isinstance(record, dict) or record.get("record_version") != RECORD_VERSION:
        version = record.get("record_version") if isinstance(record, dict) else None
        return f"its record {record_path.name} is not a version-{RECORD_VERSION} engine record (found {version!r})"
    wanted = {"component": component, "key": key.digest(), "fields": key.fields()}
    if any(record.get(name) != value for name, value in wanted.items()):
        return f"its record {record_path.name} does not match the requested build"
    return None


def checked_timing_cache(path: str | os.PathLike, report: Callable[[str], None]) -> Path:
    """``path``, once the timing cache there (if any) verifies against its checksum file: one that is
    damaged, truncated or without a valid checksum file is reported and removed, so the build starts a
    new one and TensorRT never reads unverified timings."""
    path = Path(path)
    if path.exists() or checksum_path(path).exists():
        problem = problem_with(path)
        if problem is not None:
            report(f"tensorrt: starting a new timing cache {path.name}: {problem}")
            discard(path)
    return path


def seal_timing_cache(path: str | os.PathLike) -> None:
    """Record the checksum of the timing cache a build just wrote at ``path`` (nothing when it wrote none)."""
    path = Path(path)
    if path.is_file():
        seal(path)
