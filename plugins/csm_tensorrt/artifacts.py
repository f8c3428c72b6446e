"""From a PyTorch module to cached TensorRT engines: ONNX graph -> precision plan -> engine.

The ONNX graphs are the ONNX Runtime backend's (:mod:`csm_onnxruntime.export`, cached under
``<cache_dir>/onnx``); the precision-converted graphs and the engines go under ``<cache_dir>/tensorrt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import profiles as P
from .engine_cache import EngineCache, EngineKey, onnx_sha256
from .precision import PrecisionPlan, convert_graph, plan_for

Progress = Callable[[str, int, int], None]


def _fp32(module):
    """``module`` itself when float32, else a float32 copy: graphs are exported in fp32 and the
    precision plan (:mod:`csm_tensorrt.precision`) lowers them."""
    import copy

    import torch

    dtype = next(module.parameters()).dtype
    return module if dtype == torch.float32 else copy.deepcopy(module).float()


def _onnx_graph(context, component: str, module, build: Callable[[Path], None], facts: dict) -> Path:
    from csm_onnxruntime.artifacts import ArtifactSpec, ensure_artifact, weights_hash
    from csm_onnxruntime.export import EXPORTER, OPSET

    spec = ArtifactSpec(component, weights_hash(module), export={"exporter": EXPORTER, "opset": OPSET, "batch_size": 1, "dtype": "fp32"}, facts=facts)
    return ensure_artifact(context.settings.resolved_cache_dir() / "onnx", spec, build, context.report).path


def typed_graph(onnx_path: Path, plan: PrecisionPlan, directory: Path) -> Path:
    """``onnx_path`` converted by ``plan`` (the path itself for fp32), cached beside the engines."""
    if plan.dtype == "fp32":
        return onnx_path
    import onnx

    target = directory / f"{onnx_path.stem}.{plan.dtype}.onnx"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        model = convert_graph(onnx.load(str(onnx_path)), plan)
        # Weights go to <name>.data (external data; past protobuf's 2 GB limit), the graph last:
        # a graph file exists only once its data is complete.
        tmp = directory / f".{target.name}.tmp"
        onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{target.name}.data")
        tmp.replace(target)
    return target


def engine_for(context, component: str, onnx_path: Path, plan: PrecisionPlan, options: P.TrtOptions, ranges) -> bytes:
    """The cached engine for ``component`` (built and stored when missing, stale or corrupt)."""
    import torch

    from .builder import build_engine
    from .versions import gpu_identity

    root = context.settings.resolved_cache_dir() / "tensorrt"
    graph = typed_graph(onnx_path, plan, root / "graphs")
    shapes = P.profile_shapes(component, P.onnx_input_shapes(graph), ranges)
    device_index = torch.cuda.current_device()
    gpu = gpu_identity(device_index)
    key = EngineKey(
        onnx_sha256=onnx_sha256(graph),
        export_settings={"source": onnx_path.name},
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
        context.report(f"tensorrt: building the {component} engine from {graph.name} (this takes a while)")
        timing = root / f"timing-{gpu.slug()}.cache" if options.timing_cache else None
        data = build_engine(graph, shapes, workspace_bytes=options.workspace_bytes, timing_cache=timing, report=context.report)
        cache.store(component, key, data)
    return data


def csm_engines(model, context, progress: Progress | None = None):
    """:class:`TrtCsmEngines` for a :class:`csm_pytorch.model.Csm` (exports and builds what is missing)."""
    import torch

    from csm_onnxruntime.export import export_csm_part

    from .engines import TrtBackbone, TrtCsmEngines, TrtDepthDecoder
    from .runtime import TrtRunner

    model = _fp32(model)
    options = P.TrtOptions.from_settings(context.settings)
    plan = plan_for(context.settings, "csm")
    device = torch.device("cuda", torch.cuda.current_device())
    runners = {}
    graphs = (P.BACKBONE_PREFILL, P.BACKBONE_STEP, P.DECODER_STEP)
    for done, component in enumerate(graphs):
        if progress:
            progress(f"tensorrt: {component}", done, len(graphs))
        path = _onnx_graph(context, component, model, lambda tmp, c=component: export_csm_part(model, c, tmp, 1), model.args.to_dict())
        ranges = P.axis_ranges(component, options, max_seq_len=model.args.max_seq_len)
        runners[component] = TrtRunner(engine_for(context, component, path, plan, options, ranges), device, component)
    if progress:
        progress("tensorrt: csm engines ready", len(graphs), len(graphs))
    backbone = TrtBackbone(runners[P.BACKBONE_PREFILL], runners[P.BACKBONE_STEP], model.args.max_seq_len, options.cuda_graphs)
    return TrtCsmEngines(backbone, TrtDepthDecoder(runners[P.DECODER_STEP], options.cuda_graphs))


def codec_engine(mimi, context, progress: Progress | None = None, num_codebooks: int = 32):
    """:class:`TrtMimi` for a transformers ``MimiModel``."""
    import torch

    from csm_onnxruntime.export import export_mimi_decoder_step, export_mimi_encoder

    from .engines import TrtMimi
    from .runtime import TrtRunner

    options = P.TrtOptions.from_settings(context.settings)
    plan = plan_for(context.settings, "codec")
    device = torch.device("cuda", torch.cuda.current_device())
    spf = mimi.config.frame_size
    facts = {"num_codebooks": num_codebooks, "frame_size": spf, "sampling_rate": mimi.config.sampling_rate}
    builders = {
        P.MIMI_ENCODER: lambda tmp: export_mimi_encoder(mimi, num_codebooks, tmp, 1),
        P.MIMI_DECODER_STEP: lambda tmp: export_mimi_decoder_step(mimi, num_codebooks, tmp, 1),
    }
    runners = {}
    for done, (component, build) in enumerate(builders.items()):
        if progress:
            progress(f"tensorrt: {component}", done, len(builders))
        path = _onnx_graph(context, component, mimi, build, facts)
        ranges = P.axis_ranges(component, options, max_seq_len=1, samples_per_frame=spf)
        runners[component] = TrtRunner(engine_for(context, component, path, plan, options, ranges), device, component)
    if progress:
        progress("tensorrt: codec engines ready", len(builders), len(builders))
    return TrtMimi(runners[P.MIMI_ENCODER], runners[P.MIMI_DECODER_STEP], mimi, num_codebooks, options.max_decode_frames)
