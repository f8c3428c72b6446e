"""Hooks of the in-tree onnxruntime plugin: the ``onnxruntime`` backend for ``csm``, ``codec``, ``causal_lm``
and ``speech_to_text``.

Nothing here imports onnxruntime or torch: the factories import the modules that do.
"""

from __future__ import annotations

import importlib.util

from csm_core import hookimpl
from csm_core.errors import BackendUnavailable
from csm_core.records import Backend

INSTALL_HINT = "pip install 'csm-multi[onnx]'"


def check() -> None:
    """onnxruntime to run; onnx and onnxscript (and torch) to export the graphs."""
    missing = [n for n in ("onnxruntime", "onnx", "onnxscript", "torch") if importlib.util.find_spec(n) is None]
    if missing:
        raise BackendUnavailable(f"the onnxruntime backend needs {', '.join(missing)}: {INSTALL_HINT}")


def device_check(device: str) -> str | None:
    """Why this onnxruntime build cannot run on ``device`` (no CUDA provider in a CPU-only build), or None."""
    from csm_onnxruntime.session import missing_provider

    return missing_provider(device)


def doctor_checks():
    """What ``csmctl doctor`` lists about ONNX Runtime (:func:`csm_onnxruntime.doctor.checks`)."""
    from csm_onnxruntime.doctor import checks

    return checks()


def _csm_engines(model, context):
    from csm_onnxruntime.engines import OnnxCsmEngines

    return OnnxCsmEngines(model, context)


def _codec_engine(model, context):
    from csm_onnxruntime.engines import OnnxMimi

    return OnnxMimi(model, context)


def prepare(context, progress):
    """Export every graph of the configured weights ahead of time; returns the ONNX paths."""
    from csm_onnxruntime.prepare import prepare_all

    return prepare_all(context, progress)


def _causal_lm_engine(component, context):
    from csm_onnxruntime.causal_lm import OnnxCausalLm

    return OnnxCausalLm(component, context)


def _speech_to_text_engine(component, context):
    from csm_onnxruntime.speech_to_text import OnnxSpeechToText

    return OnnxSpeechToText(component, context)


@hookimpl
def register_backends(register):
    register(
        Backend(
            name="onnxruntime",
            engines={"csm": _csm_engines, "codec": _codec_engine, "causal_lm": _causal_lm_engine,
                     "speech_to_text": _speech_to_text_engine},
            check=check,
            description="ONNX Runtime over exported graphs with explicit KV caches and IO binding",
            devices=("cpu", "cuda"),
            prepare=prepare,
            device_check=device_check,
            doctor_checks=doctor_checks,
        )
    )
