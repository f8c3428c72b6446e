"""csm_export: the graph layer that ONNX Runtime and TensorRT share.

What a graph is (:mod:`csm_export.graphs`: the modules exported, with explicit caches), how it is
exported (:mod:`csm_export.export`, :mod:`csm_export.lm_export`), the precision and weight-quantization
passes applied to it (:mod:`csm_export.precision`, :mod:`csm_export.quantization`), and the cache of
exported artifacts keyed by weights, export settings and precision (:mod:`csm_export.artifacts`,
:mod:`csm_export.specs`). The export configuration is data that the exporter and both runtimes read.
"""
