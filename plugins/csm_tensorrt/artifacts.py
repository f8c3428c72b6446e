"""From a PyTorch module to cached TensorRT engines: ONNX graph -> precision plan -> engine.

The ONNX graphs are the ONNX Runtime backend's (:mod:`csm_export.export`, cached under
``<cache_dir>/onnx``) with the very specs ONNX Runtime uses (:func:`csm_graph_specs`,
:func:`mimi_graph_spec`: same component names, exporter, opset, batch size 1, cache sizes and dtype), so
a graph exported by either backend is found by the other. Graphs are exported in float32 and the
TensorRT precision plan lowers them (:mod:`csm_tensorrt.precision`); the precision-converted graphs and
the engines go under ``<cache_dir>/tensorrt``.

Every file here is verified when it is loaded: the graphs, typed graphs included, are
:func:`csm_export.artifacts.ensure_artifact` artifacts (checksum file, metadata, key), the engines and
timing caches have checksum files (:mod:`csm_tensorrt.engine_cache`). An engine's key names its graph by
the graph's verified checksum, so no graph is hashed twice for one load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import profiles as P
from .engine_cache import EngineCache, EngineKey, checked_timing_cache, seal_timing_cache
from .precision import PrecisionPlan, convert_graph, plan_for

Progress = Callable[[str, int, int], None]


def _fp32(module):
    """``module`` itself when float32, else a float32 copy: graphs are exported in fp32 and the
    precision plan (:mod:`csm_tensorrt.precision`) lowers them."""
    import copy

    import torch

    dtype = next(module.parameters()).dtype
    return module if dtype == torch.float32 else copy.deepcopy(module).float()


def csm_graph_specs(model) -> dict:
    """{graph: ArtifactSpec} of the CSM graphs for a float32 :class:`Csm`, exactly as ONNX Runtime keys them."""
    from csm_export.artifacts import weights_hash
    from csm_export.specs import csm_spec

    whash = weights_hash(model)
    return {graph: csm_spec(model, graph, whash, 1) for graph in (P.BACKBONE_PREFILL, P.BACKBONE_STEP, P.DECODER_STEP)}


def mimi_graph_spec(mimi, num_codebooks: int):
    """The ArtifactSpec of the Mimi decoder-step graph, exactly as ONNX Runtime keys it."""
    from csm_export.artifacts import mimi_decoder_spec

    return mimi_decoder_spec(mimi, num_codebooks, 1)


def onnx_artifact(context, spec, build: Callable[[Path], None]):
    """The verified cached ONNX graph for ``spec`` (an :class:`~csm_export.artifacts.Artifact`,
    shared with the ONNX Runtime backend), exported when missing or damaged."""
    from csm_export.artifacts import ensure_artifact

    return ensure_artifact(context.settings.resolved_cache_dir() / "onnx", spec, build, context.report)


def onnx_graph(context, spec, build: Callable[[Path], None]) -> Path:
    """The path of :func:`onnx_artifact`."""
    return onnx_artifact(context, spec, build).path


def typed_spec(spec, source_sha256: str, plan: PrecisionPlan):
    """The ArtifactSpec of ``spec``'s graph typed by ``plan``: the plan and the source graph's checksum
    are in its key, so another plan or another source graph never finds it."""
    from csm_export.artifacts import ArtifactSpec

    export = dict(spec.export, precision=plan.as_dict(), source_sha256=source_sha256)
    return ArtifactSpec(spec.component, spec.weights_hash, export, dict(spec.facts))


def typed_graph(source, spec, plan: PrecisionPlan, directory: Path, report: Callable[[str], None]):
    """The verified graph ``source`` (the Artifact of ``spec``) typed by ``plan``: ``source`` itself for
    fp32, else a cached artifact in ``directory``, converted again (and reported) when missing or damaged.

    Typed graphs keep their weights in ``<name>.data`` beside them (past protobuf's 2 GB limit too).
    """
    if plan.dtype == "fp32":
        return source
    from csm_export.artifacts import ensure_artifact

    def build(staged: Path) -> None:
        import onnx

        model = convert_graph(onnx.load(str(source.path)), plan)
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{staged.name}.data")

    return ensure_artifact(directory, typed_spec(spec, source.sha256, plan), build, report, backend="tensorrt")


def engine_for(context, component: str, source, spec, plan: PrecisionPlan, options: P.TrtOptions, ranges) -> bytes:
    """The cached engine for ``component`` from the graph ``source`` (the Artifact of ``spec``), built
    and stored when missing, stale or damaged."""
    import torch

    from .builder import build_engine
    from .versions import gpu_identity

    root = context.settings.resolved_cache_dir() / "tensorrt"
    graph = typed_graph(source, spec, plan, root / "graphs", context.report)
    shapes = P.profile_shapes(component, P.onnx_input_shapes(graph.path), ranges)
    device_index = torch.cuda.current_device()
    gpu = gpu_identity(device_index)
    key = EngineKey(
        onnx_sha256=graph.sha256,  # verified by typed_graph / ensure_artifact: not hashed again
        export_settings={"source": source.path.name},
        tensorrt_version=gpu.tensorrt_version,
        cuda_version=gpu.cuda_version,
        gpu_name=gpu.gpu_name,
        compute_capability=gpu.compute_capability,
        precision=plan.as_dict(),
        profiles={name: [list(s) for s in triple] for name, triple in shapes.items()},
        builder={"workspace_bytes": options.workspace_bytes},
    )
    cache = EngineCache(root)
    data = cache.load(component, key, context.report)
    if data is None:
        context.report(f"tensorrt: building the {component} engine from {graph.path.name} (this takes a while)")
        timing = None
        if options.timing_cache:
            timing = checked_timing_cache(root / f"timing-{gpu.slug()}.cache", context.report)
        data = build_engine(graph.path, shapes, workspace_bytes=options.workspace_bytes, timing_cache=timing,
                            report=context.report)
        if timing is not None:
            seal_timing_cache(timing)
        cache.store(component, key, data)
    return data


def csm_engines(model, context, progress: Progress | None = None):
    """:class:`TrtCsmEngines` for a :class:`csm_model.model.Csm` (exports and builds what is missing)."""
    import torch

    from csm_export.export import export_csm_part

    from .engines import TrtBackbone, TrtCsmEngines, TrtDepthDecoder
    from .runtime import TrtRunner

    model = _fp32(model)
    options = P.TrtOptions.from_settings(context.settings)
    plan = plan_for(context.settings, "csm")
    device = torch.device("cuda", torch.cuda.current_device())
    runners = {}
    graphs = (P.BACKBONE_PREFILL, P.BACKBONE_STEP, P.DECODER_STEP)
    specs = csm_graph_specs(model)
    for done, component in enumerate(graphs):
        if progress:
            progress(f"tensorrt: {component}", done, len(graphs))
        source = onnx_artifact(context, specs[component], lambda tmp, c=component: export_csm_part(model, c, tmp, 1))
        ranges = P.axis_ranges(component, options, max_seq_len=model.args.max_seq_len)
        engine = engine_for(context, component, source, specs[component], plan, options, ranges)
        runners[component] = TrtRunner(engine, device, component)
    if progress:
        progress("tensorrt: csm engines ready", len(graphs), len(graphs))
    backbone = TrtBackbone(runners[P.BACKBONE_PREFILL], runners[P.BACKBONE_STEP], model.args.max_seq_len, options.cuda_graphs)
    return TrtCsmEngines(backbone, TrtDepthDecoder(runners[P.DECODER_STEP], options.cuda_graphs))


def codec_engine(mimi, context, progress: Progress | None = None, num_codebooks: int = 32):
    """:class:`TrtMimi` for a transformers ``MimiModel``.

    The decoder step is a TensorRT engine. The encoder is one too once :mod:`csm_export.export`
    can export it (``export_mimi_encoder``); until then encoding runs in PyTorch, as on ONNX Runtime,
    and that is reported on first use.
    """
    import torch

    from csm_export import export

    from .engines import TrtMimi
    from .runtime import TrtRunner

    mimi = _fp32(mimi)
    options = P.TrtOptions.from_settings(context.settings)
    plan = plan_for(context.settings, "codec")
    device = torch.device("cuda", torch.cuda.current_device())
    spf = mimi.config.frame_size
    specs = {P.MIMI_DECODER_STEP: mimi_graph_spec(mimi, num_codebooks)}
    builders = {P.MIMI_DECODER_STEP: lambda tmp: export.export_mimi_decoder_step(mimi, num_codebooks, tmp, 1)}
    export_encoder = getattr(export, "export_mimi_encoder", None)
    if export_encoder is not None:
        from csm_export.artifacts import ArtifactSpec

        decoder_spec = specs[P.MIMI_DECODER_STEP]
        specs[P.MIMI_ENCODER] = ArtifactSpec(P.MIMI_ENCODER, decoder_spec.weights_hash, decoder_spec.export, decoder_spec.facts)
        builders[P.MIMI_ENCODER] = lambda tmp: export_encoder(mimi, num_codebooks, tmp, 1)
    runners = {}
    for done, (component, build) in enumerate(builders.items()):
        if progress:
            progress(f"tensorrt: {component}", done, len(builders))
        source = onnx_artifact(context, specs[component], build)
        ranges = P.axis_ranges(component, options, max_seq_len=1, samples_per_frame=spf)
        engine = engine_for(context, component, source, specs[component], plan, options, ranges)
        runners[component] = TrtRunner(engine, device, component)
    if progress:
        progress("tensorrt: codec engines ready", len(builders), len(builders))
    trt_mimi = TrtMimi(runners.get(P.MIMI_ENCODER), runners[P.MIMI_DECODER_STEP], mimi, num_codebooks, options.max_decode_frames)
    if P.MIMI_ENCODER in runners:
        return trt_mimi
    return TorchEncodingMimi(trt_mimi, mimi, num_codebooks, context.report)


class TorchEncodingMimi:
    """:class:`~csm_core.components.CodecEngine`: decoding on TensorRT (a :class:`TrtMimi` without an
    encoder engine), encoding in PyTorch (the Mimi encoder does not export to ONNX yet; reported once)."""

    def __init__(self, decoding, mimi_model, num_codebooks: int, report: Callable[[str], None]) -> None:
        from csm_model.mimi import TorchMimi

        self._decoding, self._torch = decoding, TorchMimi(mimi_model, num_codebooks)
        self._report, self._reported = report, False
        self.sample_rate, self.frame_rate = decoding.sample_rate, decoding.frame_rate
        self.num_codebooks, self.samples_per_frame = decoding.num_codebooks, decoding.samples_per_frame

    def encode(self, pcm):
        if not self._reported:
            self._report("tensorrt: the Mimi encoder does not export to ONNX yet; encoding runs in PyTorch")
            self._reported = True
        return self._torch.encode(pcm)

    def init_state(self, batch_size: int = 1):
        return self._decoding.init_state(batch_size)

    def decode_step(self, codes, state):
        return self._decoding.decode_step(codes, state)

    def decode(self, codes):
        return self._decoding.decode(codes)
