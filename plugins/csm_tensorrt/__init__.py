"""In-tree plugin: the TensorRT backend (engines built from the ONNX graphs of :mod:`csm_export`, shared with ONNX Runtime).

Only :mod:`csm_tensorrt.plugin` is imported at start-up; it imports nothing heavy. The modules that
need ``tensorrt`` or ``torch`` import them inside their functions or are imported only by factories.
"""
