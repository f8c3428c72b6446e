"""From a PyTorch module to cached TensorRT engines: ONNX graph -> precision plan -> engine.

The ONNX graphs are the ones the ONNX Runtime backend runs too (:mod:`csm_export.export`, cached under
``<cache_dir>/onnx``), with the very specs ONNX Runtime uses (:func:`csm_graph_specs`,
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
    """:class:`TrtMimi` for a transformers ``MimiModel``: the streaming decoder step and the streaming
    encoder step (:mod:`csm_export.mimi_encoder`), each a TensorRT engine built from the ONNX graph that
    ONNX Runtime runs (the same artifact)."""
    import torch

    from csm_export import export
    from csm_export.mimi_encoder import export_mimi_encoder_step, mimi_encoder_spec

    from .engines import TrtMimi
    from .runtime import TrtRunner

    mimi = _fp32(mimi)
    options = P.TrtOptions.from_settings(context.settings)
    plan = plan_for(context.settings, "codec")
    device = torch.device("cuda", torch.cuda.current_device())
    spf = mimi.config.frame_size
    specs = {P.MIMI_DECODER_STEP: mimi_graph_spec(mimi, num_codebooks), P.MIMI_ENCODER: mimi_encoder_spec(mimi, num_codebooks, 1)}
    builders = {P.MIMI_DECODER_STEP: lambda tmp: export.export_mimi_decoder_step(mimi, num_codebooks, tmp, 1),
                P.MIMI_ENCODER: lambda tmp: export_mimi_encoder_step(mimi, num_codebooks, tmp, 1)}
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
    return TrtMimi(runners[P.MIMI_ENCODER], runners[P.MIMI_DECODER_STEP], mimi, num_codebooks, options.max_decode_frames)
