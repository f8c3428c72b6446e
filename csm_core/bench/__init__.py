"""The benchmark harness behind ``csmctl bench`` and ``benchmarks/``.

- :mod:`.matrix`: the cells to run (backend x optimizer set x preset), parsed from CLI strings.
- :mod:`.runner`: runs one cell through a :class:`~csm_core.pipeline.Pipeline` and measures it.
- :mod:`.reference`: the reference row, transformers' ``CsmForConditionalGeneration.generate``.
- :mod:`.floor`: the physical limit, weight bytes read per frame over the memory bandwidth.
- :mod:`.memory`: peak host and device memory while a cell runs.
- :mod:`.machine`: what the JSON says about the machine.
- :mod:`.report`: the JSON document and its Markdown table of ratios.
- :mod:`.plot`: the PNG plot.
- :mod:`.command`: the ``bench`` command function for typer.

Nothing here imports torch, numpy or matplotlib at import time except :mod:`.runner`,
:mod:`.reference` and :mod:`.plot`, which are imported only when a benchmark runs.
"""
