"""Engine cache keys, atomic writes, and verification on load of every TensorRT cache: engines, timing
caches and precision-typed graphs, each damaged every way (truncated, bytes flipped in the middle,
checksum file missing, wrong or garbage) is reported and rebuilt to the clean bytes (no TensorRT needed)."""

from __future__ import annotations

import json

import pytest

from csm_core.artifact_check import checksum_path
from csm_tensorrt.engine_cache import EngineCache, EngineKey, checked_timing_cache, seal_timing_cache, write_atomic

BASE = dict(
    onnx_sha256="a" * 64,
    export_settings={"opset": 18, "exporter": "dynamo"},
    tensorrt_version="10.13.0.35",
    cuda_version="12.8",
    gpu_name="NVIDIA H100",
    compute_capability="9.0",
    precision={"dtype": "fp16", "fp32_ops": ["Softmax"]},
    profiles={"inputs_embeds": [[1, 1, 8], [1, 4, 8], [1, 16, 8]]},
)
CHANGED = dict(
    onnx_sha256="b" * 64,
    export_settings={"opset": 17, "exporter": "dynamo"},
    tensorrt_version="11.0.0",
    cuda_version="13.0",
    gpu_name="NVIDIA H200",
    compute_capability="9.1",
    precision={"dtype": "bf16", "fp32_ops": ["Softmax"]},
    profiles={"inputs_embeds": [[1, 1, 8], [1, 4, 8], [1, 32, 8]]},
)


def test_same_fields_same_key_and_dict_order_does_not_matter():
    reordered = dict(BASE, export_settings={"exporter": "dynamo", "opset": 18})
    assert EngineKey(**BASE).digest() == EngineKey(**reordered).digest()


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_every_field_changes_the_key(field):
    assert EngineKey(**BASE).digest() != EngineKey(**dict(BASE, **{field: CHANGED[field]})).digest()


def test_store_then_load_round_trip(tmp_path):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    cache.store("backbone_step", key, b"engine-bytes")
    assert cache.load("backbone_step", key, messages.append) == b"engine-bytes"
    assert messages == []


def test_corrupt_engine_is_detected_by_its_checksum(tmp_path):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    engine_path = cache.store("decoder", key, b"x" * 100)
    engine_path.write_bytes(b"y" * 100)  # same size, other bytes
    assert cache.load("decoder", key, messages.append) is None
    assert "corrupted" in messages[0] and engine_path.name in messages[0]


def damage(path, how: str) -> str:
    """Damage the cached file ``path`` (or its checksum file) ``how``; returns what the report must say."""
    sums = checksum_path(path)
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bytes-flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif how == "checksum-missing":
        sums.unlink()
        return "missing"
    elif how == "checksum-wrong":
        sums.write_text(f"{'f' * 64}  {path.name}\n")
    elif how == "checksum-garbage":
        sums.write_bytes(b"\xff\xfe not a checksum \x00")
        return "checksum file"
    else:
        raise ValueError(how)
    return "does not match the recorded"


DAMAGES = ["truncated", "bytes-flipped", "checksum-missing", "checksum-wrong", "checksum-garbage"]
ENGINE = bytes(range(256)) * 64  # 16 KiB standing for a serialized engine


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_engine_is_reported_and_rebuilt_to_the_clean_bytes(tmp_path, how):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    engine_path = cache.store("backbone_step", key, ENGINE)
    said = damage(engine_path, how)
    assert cache.load("backbone_step", key, messages.append) is None  # never the damaged bytes
    assert len(messages) == 1 and "rebuilding the backbone_step engine" in messages[0]
    assert engine_path.name in messages[0] and said in messages[0]
    cache.store("backbone_step", key, ENGINE)  # what engine_for does next: build and store
    assert cache.load("backbone_step", key, messages.append) == ENGINE and len(messages) == 1


@pytest.mark.parametrize("record", ["missing", "garbage", "a list", "version 1"])
def test_a_missing_or_unreadable_record_is_reported_and_rebuilt(tmp_path, record):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    _, record_path = cache.paths("decoder", key)
    cache.store("decoder", key, ENGINE)
    if record == "missing":
        record_path.unlink()
    elif record == "garbage":
        record_path.write_bytes(b"\x00{{{")
    elif record == "a list":
        record_path.write_text("[1, 2]")
    else:  # written before engines had checksum files: its engine_sha256 is not trusted any more
        old = json.loads(record_path.read_text())
        old["record_version"] = 1
        record_path.write_text(json.dumps(old))
    assert cache.load("decoder", key, messages.append) is None
    assert len(messages) == 1 and record_path.name in messages[0] and "rebuilding" in messages[0]
    # naming what changed for another build reads what records it can, and skips the others
    expected = ["gpu_name"] if record == "version 1" else []
    assert cache.stale_fields("decoder", EngineKey(**dict(BASE, gpu_name="other"))) == expected


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_timing_cache_is_reported_and_removed_before_a_build(tmp_path, how):
    timing, messages = tmp_path / "timing-h100.cache", []
    assert checked_timing_cache(timing, messages.append) == timing and messages == []  # none yet: nothing to say
    write_atomic(timing, b"timings" * 100)  # what the builder writes after a build
    seal_timing_cache(timing)
    assert checked_timing_cache(timing, messages.append).read_bytes() == b"timings" * 100 and messages == []
    said = damage(timing, how)
    assert checked_timing_cache(timing, messages.append) == timing
    assert len(messages) == 1 and timing.name in messages[0] and "new timing cache" in messages[0]
    assert said in messages[0]
    assert not timing.exists() and not checksum_path(timing).exists()  # the build starts a new one


def test_an_unsealed_timing_cache_is_not_used(tmp_path):
    """A build that died between writing the timing cache and its checksum file."""
    timing, messages = tmp_path / "timing.cache", []
    write_atomic(timing, b"timings")
    checked_timing_cache(timing, messages.append)
    assert not timing.exists() and "missing" in messages[0]
    seal_timing_cache(timing)  # no build wrote one: nothing to seal
    assert not checksum_path(timing).exists()


def test_interrupted_engine_write_leaves_nothing_loadable(tmp_path, monkeypatch):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    engine_path, sidecar_path = cache.paths("decoder", key)

    def fail(*args):
        raise KeyboardInterrupt  # killed between writing the temp file and renaming it

    monkeypatch.setattr("csm_tensorrt.engine_cache.os.replace", fail)
    with pytest.raises(KeyboardInterrupt):
        cache.store("decoder", key, b"engine")
    monkeypatch.undo()
    assert not engine_path.exists() and not sidecar_path.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is removed too
    assert cache.load("decoder", key, messages.append) is None


def test_engine_without_checksum_or_record_is_rebuilt(tmp_path):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    engine_path, record_path = cache.paths("decoder", key)
    write_atomic(engine_path, b"engine")  # the process died before the checksum file and record were written
    assert cache.load("decoder", key, messages.append) is None
    assert record_path.name in messages[0] and "missing" in messages[0]


def test_a_changed_field_is_named_when_rebuilding(tmp_path):
    cache, messages = EngineCache(tmp_path), []
    cache.store("decoder", EngineKey(**BASE), b"old")
    newer = EngineKey(**dict(BASE, tensorrt_version="11.0.0"))
    assert cache.load("decoder", newer, messages.append) is None
    assert "tensorrt_version" in messages[0] and "gpu_name" not in messages[0]


def test_record_holds_the_key_fields_and_the_checksum_file_the_hash(tmp_path):
    import hashlib

    cache, key = EngineCache(tmp_path), EngineKey(**BASE)
    engine_path = cache.store("decoder", key, b"abc")
    record = json.loads(cache.paths("decoder", key)[1].read_text())
    assert record["key"] == key.digest() and record["fields"]["gpu_name"] == "NVIDIA H100"
    assert record["engine_bytes"] == 3
    assert checksum_path(engine_path).read_text() == f"{hashlib.sha256(b'abc').hexdigest()}  {engine_path.name}\n"


def test_key_fields_must_be_json_like():
    with pytest.raises(TypeError, match="JSON-like"):
        EngineKey(**dict(BASE, export_settings={"x": object()})).digest()


# ------------------------------------------------------------------ precision-typed graphs (ONNX, no TensorRT)


def toy_source(tmp_path):
    """(Artifact, spec) of a small float32 graph in the shared ONNX cache, as onnx_artifact makes it."""
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from csm_export.artifacts import ArtifactSpec, ensure_artifact

    # 64 x 64: past onnx's 1 KiB threshold for external data, also in fp16
    weights = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)

    def build(path):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64])
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["logits"])]
        graph = helper.make_graph(nodes, "toy", [x], [y], [numpy_helper.from_array(weights, "W")])
        onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))

    spec = ArtifactSpec("toy", "0123456789abcdef", export={"exporter": "test", "opset": 18}, facts={"width": 64})
    return ensure_artifact(tmp_path / "onnx", spec, build, lambda m: None), spec


def run_graph(path):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    x = np.linspace(-1, 1, 64, dtype=np.float32)[None]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_fp32_plans_use_the_source_graph_and_others_a_cached_typed_graph(tmp_path):
    from csm_tensorrt.artifacts import typed_graph
    from csm_tensorrt.precision import PrecisionPlan

    source, spec = toy_source(tmp_path)
    messages: list[str] = []
    assert typed_graph(source, spec, PrecisionPlan("fp32"), tmp_path / "graphs", messages.append) is source
    fp16 = typed_graph(source, spec, PrecisionPlan("fp16"), tmp_path / "graphs", messages.append)
    assert fp16.built and fp16.path.parent == tmp_path / "graphs" and len(fp16.data_files) == 1
    assert messages and messages[-1].startswith("tensorrt: exporting")
    again = typed_graph(source, spec, PrecisionPlan("fp16"), tmp_path / "graphs", messages.append)
    assert not again.built and again.sha256 == fp16.sha256 and len(messages) == 1
    other = typed_graph(source, spec, PrecisionPlan("fp16", fp32_ops=frozenset()), tmp_path / "graphs", messages.append)
    assert other.path != fp16.path  # the plan is in the key
    assert run_graph(fp16.path).dtype.name == "float32"  # logits stay float32


@pytest.mark.parametrize(
    ("target", "how"), [("graph", h) for h in DAMAGES] + [("data", "truncated"), ("data", "bytes-flipped")]
)
def test_a_damaged_typed_graph_is_reported_and_converted_again_to_the_clean_bytes(tmp_path, how, target):
    """The engine key names the typed graph by its verified checksum: a damaged graph never reaches
    the builder, and the graph converted again is byte-identical, so the clean engine is found."""
    import numpy as np

    from csm_tensorrt.artifacts import typed_graph
    from csm_tensorrt.precision import PrecisionPlan

    source, spec = toy_source(tmp_path)
    plan, graphs = PrecisionPlan("fp16"), tmp_path / "graphs"
    clean = typed_graph(source, spec, plan, graphs, lambda m: None)
    clean_output = run_graph(clean.path)
    victim = clean.path if target == "graph" else clean.data_files[0]  # the graph's checksum file lists its data
    said = damage(victim, how)
    messages: list[str] = []
    rebuilt = typed_graph(source, spec, plan, graphs, messages.append)
    assert rebuilt.built and len(messages) == 1
    assert messages[0].startswith(f"tensorrt: rebuilding {clean.path.name}") and said in messages[0]
    assert rebuilt.sha256 == clean.sha256  # identical bytes: the same engine key as a clean run
    np.testing.assert_array_equal(run_graph(rebuilt.path), clean_output)
