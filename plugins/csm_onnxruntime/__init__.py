"""The ONNX Runtime backend: CSM and Mimi exported to ONNX graphs with explicit caches, run by onnxruntime."""
