"""The ONNX Runtime backend: CSM and Mimi exported to ONNX graphs with explicit caches, run by onnxruntime.

Public names (what other plugins may import; nothing here imports onnxruntime or torch):

- :data:`FUSED_FRAME_OPTION`: the ``[options.onnxruntime]`` key that switches on the fused frame graph
  (:mod:`csm_onnxruntime.frame_decoder`), which the ``fused-frame`` optimizer sets.
"""

FUSED_FRAME_OPTION = "fused_frame"

__all__ = ["FUSED_FRAME_OPTION"]
