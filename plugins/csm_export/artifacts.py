"""The ONNX artifact cache: keys, metadata, checksums and atomic writes.

An artifact is one ONNX file under ``settings.resolved_cache_dir() / "onnx"``, named
``<component>-<key>.onnx`` where ``key`` hashes everything that makes a graph invalid: the weights hash,
the component, the export settings (exporter, opset, batch size, cache size, dtype = precision plan)
and the component's shape facts. A graph past protobuf's 2 GB limit (CSM-1B's backbone in fp32) keeps
its weights in an external data file beside it, ``<name>.data`` (the exporter writes one when the
weights exceed 2 GB). ``<name>.sha256`` lists the SHA-256 of every file of the artifact, one
``<hex>  <file name>`` line each (``sha256sum`` format), the ``.onnx`` first.

An artifact is used only when every listed file exists with its checksum (:mod:`csm_core.artifact_check`,
the one checksum-file mechanism of every cache), the graph references exactly the listed data files, and
its ``metadata_props`` match what is wanted, including the project version (``csm_core.__version__``)
that wrote it; otherwise it is rebuilt and the reason is reported. The build
writes into a private staging folder; the checksum file is removed first, the data file and then the
graph are moved into place with :func:`os.replace`, and the checksum file is written last, so an
interrupted export never leaves an artifact that a later run would load, and a graph and its data are
only ever valid together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import csm_core
from csm_core.artifact_check import ArtifactMismatch, checksum_path, identity, verify, write_checksums
from csm_core.files import file_sha256

METADATA_PREFIX = "csm_multi."
DATA_SUFFIX = ".data"


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


def mimi_decoder_spec(mimi, num_codebooks: int = 32, batch_size: int = 1) -> ArtifactSpec:
    """The spec of the Mimi streaming-decoder graph of a transformers ``MimiModel`` (exported in float32).

    One definition for every backend that uses the graph (ONNX Runtime's :class:`OnnxMimi`, the
    TensorRT builder), so they share one cached file.
    """
    from csm_export.export import EXPORTER, OPSET

    config = mimi.config
    return ArtifactSpec(
        component="mimi_decoder_step",
        weights_hash=weights_hash(mimi),
        export={"exporter": EXPORTER, "opset": OPSET, "batch_size": batch_size, "dtype": "float32"},
        facts={"sample_rate": config.sampling_rate, "codebooks": num_codebooks, "cache_size": config.sliding_window or 0},
    )


@dataclass(frozen=True)
class Artifact:
    """A validated ONNX graph, its external data files (empty for a single-file graph) and its checksum.

    ``sha256`` is the graph file's SHA-256 for a single-file graph, else the SHA-256 of the checksum
    file's lines (graph and data): it names derived files such as ORT's optimized models.
    """

    path: Path
    sha256: str
    built: bool  # True when this call exported it
    data_files: tuple[Path, ...] = ()


def _external_tensors(model):
    """Every tensor of ``model`` (initializers and node attributes, subgraphs included) stored externally."""
    from onnx import TensorProto

    def graph_tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from graph_tensors(attribute.g)
                for sub in attribute.graphs:
                    yield from graph_tensors(sub)

    return [t for t in graph_tensors(model.graph) if t.data_location == TensorProto.EXTERNAL]


def _location(tensor) -> str:
    return next(entry.value for entry in tensor.external_data if entry.key == "location")


def external_locations(model) -> list[str]:
    """The external data files ``model`` references (relative to its folder), sorted, each once."""
    return sorted({_location(t) for t in _external_tensors(model)})


def data_file_names(path: Path, count: int) -> list[str]:
    """The cache's names for ``count`` external data files of the graph at ``path``."""
    if count == 1:
        return [path.name + DATA_SUFFIX]
    return [f"{path.name}.{i}{DATA_SUFFIX}" for i in range(count)]


def problem_with(path: Path, spec: ArtifactSpec, recorded: dict[str, str] | None = None) -> str | None:
    """Why the artifact at ``path`` (graph, data files, checksum file) cannot be used for ``spec``, or None.

    ``recorded``, when given, receives the verified {file name: SHA-256} of the artifact's files."""
    import onnx

    try:
        hashes = verify(path)  # each file hashed once
    except ArtifactMismatch as exc:
        return str(exc)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is unusable
        return f"it does not load as ONNX ({type(exc).__name__}: {exc})"
    referenced, listed = external_locations(model), sorted(set(hashes) - {path.name})
    if referenced != listed:
        return f"it references the data files {referenced} but its checksum file lists {listed}"
    found = {p.key: p.value for p in model.metadata_props}
    for key, want in spec.metadata().items():
        have = found.get(key)
        if have != want:
            return f"its metadata {key}={have!r} does not match the wanted {want!r}"
    if recorded is not None:
        recorded.update(hashes)
    return None


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _stage(model, staged: Path, path: Path) -> dict[Path, str]:
    """Point ``model``'s external tensors at the cache's data file names (in place); returns
    {staged data file: final name}. Raises when a data file the graph references is not in the staging folder."""
    locations = external_locations(model)
    renames = dict(zip(locations, data_file_names(path, len(locations))))
    moves = {}
    for location, final in renames.items():
        source = (staged.parent / location).resolve()
        if source.parent != staged.parent.resolve() or not source.is_file():
            raise RuntimeError(
                f"the export of {path.name} references the external data file {location!r}, which it did not "
                f"write beside the graph in {staged.parent}; the build must write external data next to its output"
            )
        moves[source] = final
    for tensor in _external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = renames[entry.value]
    return moves


def ensure_artifact(
    directory: Path,
    spec: ArtifactSpec,
    build: Callable[[Path], None],
    report: Callable[[str], None],
    backend: str = "onnxruntime",
) -> Artifact:
    """The validated ONNX graph for ``spec`` in ``directory``, exporting it with ``build(staged_path)``
    when it is missing or unusable (the reason goes to ``report``, prefixed with ``backend``).

    ``build`` writes a plain ONNX file at the path it is given, in a private staging folder, optionally
    with external data files beside it (relative locations). This function adds the metadata, renames
    the data files to ``<name>.data``, records every file's checksum and moves them into place.
    """
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / spec.filename()
    if path.is_file():
        recorded: dict[str, str] = {}
        problem = problem_with(path, spec, recorded)
        if problem is None:
            data = tuple(directory / n for n in recorded if n != path.name)
            return Artifact(path, identity(path, recorded), built=False, data_files=data)
        report(f"{backend}: rebuilding {path.name}: {problem}")
    else:
        report(f"{backend}: exporting {spec.component} to {path} (no cached graph for these weights and settings)")
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        staged = staging / path.name
        build(staged)
        model = onnx.load_model(str(staged), load_external_data=False)  # the graph only, never the weights
        del model.metadata_props[:]
        for key, value in spec.metadata().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        moves = _stage(model, staged, path)
        onnx.save_model(model, str(staged))
        hashes = {path.name: file_sha256(staged)}
        for source, final in moves.items():
            _fsync(source)
            hashes[final] = file_sha256(source)
        _fsync(staged)
        # The checksum first: files without a checksum file that lists them all are never loaded.
        checksum_path(path).unlink(missing_ok=True)
        for stale in directory.glob(f"{path.name}*{DATA_SUFFIX}"):
            if stale.name not in hashes:
                stale.unlink()
        for source, final in moves.items():
            os.replace(source, directory / final)
        os.replace(staged, path)
        write_checksums(path, hashes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    data = tuple(directory / final for final in moves.values())
    return Artifact(path, identity(path, hashes), built=True, data_files=data)
