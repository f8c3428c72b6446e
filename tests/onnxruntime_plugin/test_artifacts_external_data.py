"""The artifact cache with graphs whose weights live in an external data file (CSM-1B's backbone is
past protobuf's 2 GB limit): both files hashed, moved into place together, invalidated together.

A toy MatMul graph forced to external data stands in for the big one: the code path is the same.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from csm_export.artifacts import (  # noqa: E402
    ArtifactSpec,
    ensure_artifact,
    external_locations,
    problem_with,
)

WEIGHTS = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
SPEC = ArtifactSpec("toy", "0123456789abcdef", export={"exporter": "test", "opset": 18}, facts={"width": 16})


def toy_model(weights: np.ndarray = WEIGHTS):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "toy", [x], [y],
                              [numpy_helper.from_array(weights, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


class Builds:
    """A build function that writes the toy graph with its weights in ``<name>.weights`` (as the
    exporter does past 2 GB), counting its calls."""

    def __init__(self, external: bool = True) -> None:
        self.external = external
        self.calls = 0

    def __call__(self, path) -> None:
        self.calls += 1
        onnx.save_model(toy_model(), str(path), save_as_external_data=self.external, all_tensors_to_one_file=True,
                        location=path.name + ".weights", size_threshold=0)


def run(path) -> np.ndarray:
    x = np.arange(16, dtype=np.float32)[None] / 16
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_external_data_is_renamed_hashed_and_loads(tmp_path):
    build, messages = Builds(), []
    artifact = ensure_artifact(tmp_path, SPEC, build, messages.append)
    assert artifact.built and build.calls == 1
    data = tmp_path / (artifact.path.name + ".data")
    assert artifact.data_files == (data,)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [artifact.path.name, data.name, artifact.path.name + ".sha256"])  # no staging leftovers
    graph = onnx.load_model(str(artifact.path), load_external_data=False)
    assert external_locations(graph) == [data.name]
    assert artifact.path.stat().st_size < WEIGHTS.nbytes < data.stat().st_size + 1  # weights are not in the graph
    lines = (tmp_path / (artifact.path.name + ".sha256")).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [artifact.path.name, data.name]
    np.testing.assert_allclose(run(artifact.path), (np.arange(16, dtype=np.float32)[None] / 16) @ WEIGHTS, rtol=1e-5)

    again = ensure_artifact(tmp_path, SPEC, build, messages.append)
    assert not again.built and build.calls == 1
    assert again.sha256 == artifact.sha256 and again.data_files == artifact.data_files


def test_single_file_graph_has_no_data_file_and_its_own_hash(tmp_path):
    from csm_core.files import file_sha256

    artifact = ensure_artifact(tmp_path, SPEC, Builds(external=False), lambda m: None)
    assert artifact.data_files == () and artifact.sha256 == file_sha256(artifact.path)
    assert not list(tmp_path.glob("*.data"))


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_a_damaged_data_file_invalidates_the_graph(tmp_path, damage):
    build, messages = Builds(), []
    artifact = ensure_artifact(tmp_path, SPEC, build, messages.append)
    data = artifact.data_files[0]
    if damage == "corrupt":
        raw = bytearray(data.read_bytes())
        raw[7] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    else:
        data.unlink()
    assert data.name in problem_with(artifact.path, SPEC)
    rebuilt = ensure_artifact(tmp_path, SPEC, build, messages.append)
    assert rebuilt.built and build.calls == 2
    assert "rebuilding" in messages[-1] and data.name in messages[-1]
    assert problem_with(rebuilt.path, SPEC) is None
    np.testing.assert_allclose(run(rebuilt.path), (np.arange(16, dtype=np.float32)[None] / 16) @ WEIGHTS, rtol=1e-5)


def test_a_data_file_from_another_export_does_not_pass(tmp_path):
    """Graph and data are valid only together: the data of different weights under the same name fails."""
    artifact = ensure_artifact(tmp_path, SPEC, Builds(), lambda m: None)
    other = tmp_path / "other"
    other.mkdir()
    onnx.save_model(toy_model(WEIGHTS * 2), str(other / "g.onnx"), save_as_external_data=True,
                    location="g.data", size_threshold=0)
    artifact.data_files[0].write_bytes((other / "g.data").read_bytes())
    assert "does not match the recorded" in problem_with(artifact.path, SPEC)


def test_a_graph_that_switches_from_external_to_single_file_drops_the_stale_data(tmp_path):
    artifact = ensure_artifact(tmp_path, SPEC, Builds(), lambda m: None)
    artifact.path.write_bytes(b"broken")
    rebuilt = ensure_artifact(tmp_path, SPEC, Builds(external=False), lambda m: None)
    assert rebuilt.built and rebuilt.data_files == () and not artifact.data_files[0].exists()
    assert problem_with(rebuilt.path, SPEC) is None


def test_interrupted_external_export_leaves_nothing_loadable(tmp_path):
    def interrupted(path):
        Builds()(path)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_artifact(tmp_path, SPEC, interrupted, lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_a_build_whose_data_file_is_missing_is_an_error_naming_it(tmp_path):
    def lost(path):
        Builds()(path)
        (path.parent / (path.name + ".weights")).unlink()

    with pytest.raises(RuntimeError, match=r"\.weights"):
        ensure_artifact(tmp_path, SPEC, lost, lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_the_session_path_opens_an_external_data_graph_and_reuses_its_optimized_model(tmp_path):
    """What the engines do with an artifact: open it (saving the optimized graph, named by the
    artifact's combined checksum), then open the optimized graph next time."""
    from csm_onnxruntime.session import SessionOptions, create_session, optimized_path

    artifact = ensure_artifact(tmp_path, SPEC, Builds(), lambda m: None)
    x = np.arange(16, dtype=np.float32)[None] / 16
    for _ in range(2):
        session, device = create_session(artifact.path, artifact.sha256, "cpu", SessionOptions(),
                                         allow_fallback=False, report=lambda m: None)
        assert device == "cpu"
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ WEIGHTS, rtol=1e-5)
        assert optimized_path(artifact.path, artifact.sha256, "CPUExecutionProvider", "all").is_file()
