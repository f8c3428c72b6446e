"""csm_bench: the benchmark harness behind ``csmctl bench`` and ``benchmarks/``, an in-tree plugin.

- :mod:`.plugin`: the ``register_commands`` hook that adds the ``csmctl bench`` group.
- :mod:`.command`: the ``bench`` command function for typer (``python -m csm_bench`` runs it alone).
- :mod:`.matrix`: the cells to run (backend x optimizer set x preset), parsed from CLI strings.
- :mod:`.runner`: runs one cell through a :class:`~csm_core.pipeline.Pipeline` and measures it.
- :mod:`.reference`: the reference row, transformers' ``CsmForConditionalGeneration.generate``.
- :mod:`.floor`: the physical limit, weight bytes read per frame over the memory bandwidth.
- :mod:`.memory`: peak host and device memory while a cell runs.
- :mod:`.machine`: what the JSON says about the machine.
- :mod:`.report`: the JSON document and its Markdown table of ratios.
- :mod:`.plot`: the PNG plot.

Nothing here imports torch, numpy or matplotlib at import time except :mod:`.runner`,
:mod:`.reference` and :mod:`.plot`, which are imported only when a benchmark runs. The public names
below are what other plugins use (``csmctl bench serve`` in csm_serve writes its report with them):
``from csm_bench import machine_info``. They load on first use, so the ``csmctl`` start, which imports
:mod:`.plugin`, does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from csm_bench.machine import machine_info
    from csm_bench.report import write_json

__all__ = ["machine_info", "write_json"]

_HOMES = {"machine_info": "csm_bench.machine", "write_json": "csm_bench.report"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'csm_bench' has no attribute {name!r}")
