"""Engine cache keys, atomic writes and corrupt-engine detection (no TensorRT needed)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from csm_tensorrt.engine_cache import EngineCache, EngineKey, write_atomic

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


def test_corrupt_engine_is_detected_by_the_sidecar_hash(tmp_path):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    engine_path = cache.store("decoder", key, b"x" * 100)
    engine_path.write_bytes(b"y" * 100)  # same size, other bytes
    assert cache.load("decoder", key, messages.append) is None
    assert "corrupt" in messages[0]


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


def test_engine_without_sidecar_is_rebuilt(tmp_path):
    cache, key, messages = EngineCache(tmp_path), EngineKey(**BASE), []
    engine_path, sidecar_path = cache.paths("decoder", key)
    write_atomic(engine_path, b"engine")  # the process died before the sidecar was written
    assert cache.load("decoder", key, messages.append) is None
    assert "no sidecar" in messages[0]


def test_a_changed_field_is_named_when_rebuilding(tmp_path):
    cache, messages = EngineCache(tmp_path), []
    cache.store("decoder", EngineKey(**BASE), b"old")
    newer = EngineKey(**dict(BASE, tensorrt_version="11.0.0"))
    assert cache.load("decoder", newer, messages.append) is None
    assert "tensorrt_version" in messages[0] and "gpu_name" not in messages[0]


def test_sidecar_records_hash_and_fields(tmp_path):
    cache, key = EngineCache(tmp_path), EngineKey(**BASE)
    cache.store("decoder", key, b"abc")
    sidecar = json.loads(cache.paths("decoder", key)[1].read_text())
    assert sidecar["key"] == key.digest() and sidecar["fields"]["gpu_name"] == "NVIDIA H100"
    assert sidecar["engine_bytes"] == 3


def test_key_fields_must_be_json_like():
    with pytest.raises(TypeError, match="JSON-like"):
        EngineKey(**dict(BASE, export_settings={"x": object()})).digest()
