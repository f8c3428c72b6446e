"""The ONNX artifact cache: keys, metadata, checksums and atomic writes.

An artifact is one ONNX file under ``settings.resolved_cache_dir() / "onnx"``, named
``<component>-<key>.onnx`` where ``key`` hashes everything that makes a graph invalid: the weights hash,
the component, the export settings (exporter, opset, batch size, cache size, dtype = precision plan)
and the component's shape facts. Beside it, ``<name>.sha256`` holds the file's SHA-256.

A file is used only when its checksum matches and its ``metadata_props`` match what is wanted,
including the project version (``csm_core.__version__``) that wrote it; otherwise it is rebuilt and
the reason is reported. Files are written to a temporary name in the same folder and moved into place
with :func:`os.replace`, so an interrupted export never leaves a file that a later run would load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import csm_core
from csm_core.files import file_sha256, write_atomic

METADATA_PREFIX = "csm_multi."
CHECKSUM_SUFFIX = ".sha256"


def weights_hash(module) -> str:
    """SHA-256 (hex, 16 chars) of a module's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ArtifactSpec:
    """What one graph must be. ``facts`` are component facts (sample rate, codebooks, cache size);
    ``export`` the export settings. Both go into the key and into the file's metadata."""

    component: str
    weights_hash: str
    export: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)

    def key(self) -> str:
        """Hash of everything that invalidates the graph (the project version is checked via metadata)."""
        blob = json.dumps(
            {"component": self.component, "weights": self.weights_hash, "export": self.export, "facts": self.facts},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def filename(self) -> str:
        return f"{self.component}-{self.key()}.onnx"

    def metadata(self) -> dict[str, str]:
        """The ``metadata_props`` the file must carry (all strings)."""
        meta = {
            "component": self.component,
            "weights_hash": self.weights_hash,
            "export_settings": json.dumps(self.export, sort_keys=True),
            "opset": str(self.export.get("opset", "")),
            "project_version": csm_core.__version__,
            "key": self.key(),
        }
        meta.update({k: str(v) for k, v in self.facts.items()})
        return {METADATA_PREFIX + k: v for k, v in meta.items()}


@dataclass(frozen=True)
class Artifact:
    """A validated ONNX file and its checksum (the checksum names derived files such as optimized models)."""

    path: Path
    sha256: str
    built: bool  # True when this call exported it


def read_metadata(path: Path) -> dict[str, str]:
    """The file's ``metadata_props`` (raises when the file is not a loadable ONNX model)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def problem_with(path: Path, spec: ArtifactSpec) -> str | None:
    """Why the file at ``path`` cannot be used for ``spec``, or None when it can."""
    checksum = Path(str(path) + CHECKSUM_SUFFIX)
    if not checksum.is_file():
        return "its checksum file is missing (an interrupted write?)"
    expected = checksum.read_text().strip()
    actual = file_sha256(path)
    if actual != expected:
        return f"its checksum {actual[:12]} does not match the recorded {expected[:12]} (corrupted or truncated)"
    try:
        found = read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is unusable
        return f"it does not load as ONNX ({type(exc).__name__}: {exc})"
    for key, want in spec.metadata().items():
        have = found.get(key)
        if have != want:
            return f"its metadata {key}={have!r} does not match the wanted {want!r}"
    return None


def ensure_artifact(
    directory: Path,
    spec: ArtifactSpec,
    build: Callable[[Path], None],
    report: Callable[[str], None],
) -> Artifact:
    """The validated ONNX file for ``spec`` in ``directory``, exporting it with ``build(tmp_path)`` when
    it is missing or unusable (the reason goes to ``report``). ``build`` writes a plain ONNX file;
    this function adds the metadata, the checksum, and moves both into place atomically."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / spec.filename()
    if path.is_file():
        problem = problem_with(path, spec)
        if problem is None:
            return Artifact(path, Path(str(path) + CHECKSUM_SUFFIX).read_text().strip(), built=False)
        report(f"onnxruntime: rebuilding {path.name}: {problem}")
    else:
        report(f"onnxruntime: exporting {spec.component} to {path} (no cached graph for these weights and settings)")
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        build(tmp)
        model = onnx.load_model(str(tmp))
        del model.metadata_props[:]
        for key, value in spec.metadata().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(model, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha = file_sha256(tmp)
        # The checksum first: a model file without a matching checksum is never loaded.
        Path(str(path) + CHECKSUM_SUFFIX).unlink(missing_ok=True)
        os.replace(tmp, path)
        write_atomic(Path(str(path) + CHECKSUM_SUFFIX), sha + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Artifact(path, sha, built=True)
