"""The onnxruntime backend through the registry and the pipeline; its cache and its providers."""

from __future__ import annotations

import os

import onnx
import pytest
import torch

from csm_core.errors import BackendUnavailable
from ort_helpers import make_context

pytestmark = pytest.mark.slow  # exports tiny graphs (shared with test_parity through the session cache)


def test_check_passes_here_and_backend_is_registered():
    import csm_onnxruntime.plugin as plugin

    plugin.check()
    context = make_context(None)
    assert context.backend.supports("csm") and context.backend.supports("codec")
    assert context.backend.prepare is not None


def test_pipeline_speaks_on_onnxruntime(onnx_cache):
    import csm_onnxruntime.plugin as ort_plugin
    import csm_model.plugin as model_plugin
    import csm_pytorch.plugin as torch_plugin
    from csm_core.config import Settings
    from csm_core.pipeline import Pipeline
    from csm_core.plugins import Plugins

    plugins = Plugins()
    plugins.register(model_plugin, name="model")
    plugins.register(torch_plugin, name="pytorch")
    plugins.register(ort_plugin, name="onnxruntime")
    settings = Settings(backend="onnxruntime", device="cpu", models={"preset": "tiny"}, cache_dir=onnx_cache,
                        generation={"max_new_frames": 4, "seed": 0})
    turn = Pipeline(settings, plugins=plugins).speak("hello")
    assert turn.audio is not None and turn.audio.duration_s > 0
    assert [t.backend for t in turn.metrics.stages if t.stage == "tts"] == ["onnxruntime"]


def _artifact_files(cache_dir, component):
    return [p for p in (cache_dir / "onnx").glob(f"{component}-*.onnx") if ".opt." not in p.name]


def test_second_load_reuses_the_cached_graphs(ort_mimi, tiny_mimi, onnx_cache):
    from csm_onnxruntime.engines import OnnxMimi

    [path] = _artifact_files(onnx_cache, "mimi_decoder_step")
    before = path.stat().st_mtime_ns
    context = make_context(onnx_cache)
    codec = OnnxMimi(tiny_mimi, context)
    assert codec.artifact.built is False and path.stat().st_mtime_ns == before
    assert not any("export" in e or "rebuild" in e for e in context.events)
    meta = {p.key: p.value for p in onnx.load_model(str(path), load_external_data=False).metadata_props}
    import csm_core

    assert meta["csm_multi.component"] == "mimi_decoder_step"
    assert meta["csm_multi.project_version"] == csm_core.__version__
    assert meta["csm_multi.sample_rate"] == "24000" and meta["csm_multi.codebooks"] == "32"
    assert meta["csm_multi.opset"] == "18" and len(meta["csm_multi.weights_hash"]) == 16


def _spec_and_build(tiny_csm):
    from csm_export.artifacts import weights_hash
    from csm_export.specs import csm_spec
    from csm_export.export import export_csm_part

    model = tiny_csm[0]
    spec = csm_spec(model, "decoder", weights_hash(model), 1)
    calls = []

    def build(path):
        calls.append(path)
        export_csm_part(model, "decoder", path)

    return spec, build, calls


def test_corrupted_and_foreign_version_files_are_rebuilt_with_a_message(tmp_path, tiny_csm):
    from csm_export.artifacts import ensure_artifact, problem_with

    spec, build, calls = _spec_and_build(tiny_csm)
    messages: list[str] = []
    first = ensure_artifact(tmp_path, spec, build, messages.append)
    assert first.built and len(calls) == 1 and "exporting" in messages[-1]
    assert ensure_artifact(tmp_path, spec, build, messages.append).built is False and len(calls) == 1

    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 2])  # truncated
    again = ensure_artifact(tmp_path, spec, build, messages.append)
    assert again.built and len(calls) == 2 and "checksum" in messages[-1] and "rebuilding" in messages[-1]

    model = onnx.load_model(str(again.path))  # written by another project version, checksum updated
    for prop in model.metadata_props:
        if prop.key == "csm_multi.project_version":
            prop.value = "0.0.1"
    onnx.save_model(model, str(again.path))
    from csm_export.artifacts import file_sha256

    (tmp_path / (again.path.name + ".sha256")).write_text(file_sha256(again.path))
    assert "project_version" in problem_with(again.path, spec)
    ensure_artifact(tmp_path, spec, build, messages.append)
    assert len(calls) == 3 and "project_version" in messages[-1] and "0.0.1" in messages[-1]
    assert problem_with(again.path, spec) is None


def test_interrupted_export_leaves_no_loadable_file(tmp_path, tiny_csm):
    from csm_export.artifacts import ensure_artifact

    spec, build, _ = _spec_and_build(tiny_csm)

    def interrupted(path):
        build(path)
        with open(path, "r+b") as f:  # half written when the process is stopped
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_artifact(tmp_path, spec, interrupted, lambda m: None)
    assert list(tmp_path.iterdir()) == []
    messages: list[str] = []
    assert ensure_artifact(tmp_path, spec, build, messages.append).built  # exported afresh


def test_cuda_without_provider_names_available_providers_or_falls_back(ort_csm, tiny_csm, onnx_cache):
    import onnxruntime as ort

    from csm_onnxruntime.engines import OnnxCsmEngines

    with pytest.raises(BackendUnavailable) as error:
        OnnxCsmEngines(tiny_csm[0], make_context(onnx_cache, device="cuda"))
    message = str(error.value)
    assert "CUDAExecutionProvider" in message and "CPUExecutionProvider" in message
    assert "allow_fallback" in message
    assert ort.get_available_providers()[0] in message

    context = make_context(onnx_cache, device="cuda", allow_fallback=True)
    engines = OnnxCsmEngines(tiny_csm[0], context)
    assert engines.device == "cpu"
    assert any("allow_fallback" in e and "CPU" in e for e in context.events)
    engines.backbone.reset()
    hidden, logits = engines.backbone.prefill(torch.zeros(1, 3, tiny_csm[0].args.backbone_dim), torch.arange(3)[None])
    assert torch.isfinite(logits).all()


def test_pipeline_fallback_is_in_the_turn_events(onnx_cache):
    import csm_onnxruntime.plugin as ort_plugin
    import csm_model.plugin as model_plugin
    import csm_pytorch.plugin as torch_plugin
    from csm_core.config import Settings
    from csm_core.pipeline import Pipeline
    from csm_core.plugins import Plugins

    plugins = Plugins()
    plugins.register(model_plugin, name="model")
    plugins.register(torch_plugin, name="pytorch")
    plugins.register(ort_plugin, name="onnxruntime")
    settings = Settings(backend="onnxruntime", device="cuda", allow_fallback=True, models={"preset": "tiny"},
                        cache_dir=onnx_cache, generation={"max_new_frames": 2, "seed": 0})
    turn = Pipeline(settings, plugins=plugins).speak("hi")
    assert any("onnxruntime" in e and "CPU" in e for e in turn.metrics.events)


def test_optimized_model_is_saved_and_reused(ort_mimi, onnx_cache):
    codec, _ = ort_mimi
    optimized = list((onnx_cache / "onnx").glob("mimi_decoder_step-*.opt.onnx"))
    assert len(optimized) == 1
    from csm_onnxruntime.engines import OnnxMimi

    before = optimized[0].stat().st_mtime_ns
    OnnxMimi(codec.torch.model, make_context(onnx_cache))
    assert optimized[0].stat().st_mtime_ns == before


def test_unknown_session_option_is_an_error_naming_it():
    from csm_core.errors import ConfigError
    from csm_onnxruntime.session import SessionOptions

    with pytest.raises(ConfigError, match="intra_threads"):
        SessionOptions.from_options({"intra_threads": 2})
    assert SessionOptions.from_options({"intra_op_num_threads": 1}).intra_op_num_threads == 1
