"""Hooks of the in-tree TensorRT plugin: the ``tensorrt`` backend for ``csm``, ``codec``, ``causal_lm`` and
``speech_to_text`` (every engine a default turn needs). Imports nothing heavy: the factories import the
modules that do.

Not yet verified on hardware: the build and run paths are written against the TensorRT 10.12+/11.x
Python API and tested only where TensorRT and a CUDA GPU are present (tests marked ``tensorrt``/``gpu``).
"""

from __future__ import annotations

from csm_core import hookimpl
from csm_core.errors import BackendUnavailable
from csm_core.records import Backend

from .versions import INSTALL_HINT, installed_tensorrt_version, version_problem


def missing_requirements() -> list[str]:
    """What keeps the tensorrt backend from running here, one sentence each (empty: it can run)."""
    problems = []
    version = installed_tensorrt_version()
    if version is None:
        problems.append(f"the tensorrt package is not installed: {INSTALL_HINT}")
    elif version != "unknown" and (problem := version_problem(version)):
        problems.append(problem)
    from csm_core.devices import cuda_status

    usable, reason = cuda_status()
    if not usable:
        problems.append(f"no CUDA GPU: {reason} (torch.cuda.is_available() is False); TensorRT runs only on NVIDIA GPUs")
    return problems


def check_tensorrt() -> None:
    problems = missing_requirements()
    if problems:
        raise BackendUnavailable("the tensorrt backend cannot run here: " + "; ".join(problems))


def doctor_checks():
    """The ``tensorrt`` distribution ``csmctl doctor`` lists: its version, or that it is not installed."""
    from csm_core.doctor import Check, installed_versions

    version = installed_versions(["tensorrt"])["tensorrt"]
    return [Check("tensorrt", version is not None, version or "not installed")]


def _csm_engines(model, context):
    from .artifacts import csm_engines

    return csm_engines(model, context)


def _codec_engine(model, context):
    from .artifacts import codec_engine

    return codec_engine(model, context)


def _causal_lm_engine(component, context):
    from .causal_lm import causal_lm_engine

    return causal_lm_engine(component, context)


def _speech_to_text_engine(component, context):
    from .speech_to_text import speech_to_text_engine

    return speech_to_text_engine(component, context)


def _prepare(context, progress):
    """Export the ONNX graphs and build every engine for the configured models (``csmctl export``)."""
    check_tensorrt()
    from csm_model.sources import load_csm_weights, load_mimi_model

    from .artifacts import codec_engine, csm_engines

    csm_engines(load_csm_weights(context.settings, "cuda").model, context, progress)
    codec_engine(load_mimi_model(context.settings, "cuda"), context, progress)
    return sorted((context.settings.resolved_cache_dir() / "tensorrt").glob("*.engine"))


@hookimpl
def register_backends(register):
    register(
        Backend(
            name="tensorrt",
            engines={"csm": _csm_engines, "codec": _codec_engine, "causal_lm": _causal_lm_engine,
                     "speech_to_text": _speech_to_text_engine},
            check=check_tensorrt,
            description="NVIDIA TensorRT engines built from the ONNX graphs (strongly typed; not yet verified on hardware)",
            devices=("cuda",),
            prepare=_prepare,
            doctor_checks=doctor_checks,
        )
    )
