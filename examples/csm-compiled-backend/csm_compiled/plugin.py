"""Hooks of the example ``compiled`` backend: CSM's engines under ``torch.compile``, Mimi eager.

Nothing here imports torch at module level (``csmctl --help`` and ``csmctl plugins`` import this
module): the engine factories import :mod:`csm_compiled.engines` when a pipeline builds them.

Options (``[options.compiled]`` in the config, or ``CSM_OPTIONS__COMPILED__BACKEND=aot_eager``):

- ``backend``: the ``torch.compile`` backend, default ``"inductor"`` (needs a C++ compiler on the
  CPU, triton on CUDA); ``"aot_eager"`` compiles fast and needs neither.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from importlib import metadata

from pydantic import BaseModel, ConfigDict, Field

from csm_core import hookimpl
from csm_core.config import plugin_options
from csm_core.errors import BackendUnavailable, CsmError
from csm_core.records import Backend

NAME = "compiled"
DEVICES = ("cpu", "cuda")


class CompiledOptions(BaseModel):
    """``[options.compiled]``: how the compiled backend compiles CSM."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("inductor", description="torch.compile backend: inductor, aot_eager, ...")


def check() -> None:
    """Cheap (``csmctl doctor`` calls it): the libraries are importable, nothing is loaded."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailable(
            f"the {NAME} backend needs {' and '.join(missing)}: pip install 'csm-multi[torch]'"
        )


def device_check(device: str) -> str | None:
    """Why this torch build cannot run on ``device`` although the machine has it, or None."""
    if device == "cuda":
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return "torch is not installed"
        if version.endswith("+cpu"):
            return f"this torch build ({version}) has no CUDA support"
    return None


def _require(model, options: CompiledOptions) -> str:
    """The device the engines will run on, after checking that this backend can compile for it there;
    anything missing is an error naming it and what is available (never a silent fallback to eager)."""
    import torch

    device = next(model.parameters()).device.type
    if device not in DEVICES:
        raise BackendUnavailable(f"the {NAME} backend runs on {', '.join(DEVICES)}, not on {device!r}")
    available = torch.compiler.list_backends(exclude_tags=())  # debug and experimental ones too
    if options.backend not in available:
        usual = sorted(set(torch.compiler.list_backends()) | ({"aot_eager", "eager"} & set(available)))
        raise BackendUnavailable(
            f"[options.{NAME}] backend = {options.backend!r} is not a torch.compile backend here; "
            f"choose one of {', '.join(usual)} (all: torch.compiler.list_backends(exclude_tags=()))"
        )
    if options.backend == "inductor":
        if device == "cpu" and not (os.environ.get("CXX") or any(map(shutil.which, ("g++", "clang++", "c++")))):
            raise BackendUnavailable(
                f"the {NAME} backend's inductor compiles C++ on the CPU, and no C++ compiler was found "
                f"(g++, clang++, or $CXX): install one, or set [options.{NAME}] backend = \"aot_eager\""
            )
        if device == "cuda" and importlib.util.find_spec("triton") is None:
            raise BackendUnavailable(
                f"the {NAME} backend's inductor needs triton on CUDA, which is not installed: "
                f"pip install triton, or set [options.{NAME}] backend = \"aot_eager\""
            )
    return device


def _csm_engines(model, context):
    options = plugin_options(context.settings, NAME, CompiledOptions)
    if context.settings.weight_quantization:
        raise CsmError(
            f"the {NAME} backend does not quantize weights: remove weight_quantization from the config, "
            "or run the tts stage on the pytorch backend (backends.tts = \"pytorch\")"
        )
    _require(model, options)
    from csm_compiled.engines import CompiledCsmEngines

    context.log.info("%s: compiling CSM with torch.compile(backend=%r)", NAME, options.backend)
    return CompiledCsmEngines(model, backend=options.backend)


def _codec_engine(model, context):
    """Mimi runs eagerly: :class:`csm_model.mimi.TorchMimi` over the transformers ``MimiModel``."""
    from csm_model.mimi import TorchMimi
    from csm_model.sources import check_codec_precision

    check_codec_precision(context.settings, NAME)
    return TorchMimi(model)


@hookimpl
def register_backends(register):
    register(
        Backend(
            name=NAME,
            engines={"csm": _csm_engines, "codec": _codec_engine},
            check=check,
            description="CSM's backbone and depth decoder under torch.compile; Mimi eager (example plugin)",
            devices=DEVICES,
            device_check=device_check,
        )
    )
