"""Running ONNX Runtime sessions on torch tensors without copies: :func:`bind_tensor`, and the ping-pong
KV caches (:class:`CacheBuffers`) that the CSM graphs, the reply LM and Whisper's decoder share."""

from __future__ import annotations

import numpy as np
import torch

from csm_export.graphs import cache_names

# Element types for IO binding: numpy types, or ONNX TensorProto numbers where numpy has none (bf16).
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.bfloat16: 16}


def bind_tensor(binding, name: str, tensor: torch.Tensor, output: bool = False) -> None:
    """Bind ``tensor`` (CPU or CUDA, no copy) as input or output ``name`` of an ORT ``IOBinding``."""
    device_type = "cuda" if tensor.is_cuda else "cpu"
    device_id = tensor.device.index or 0
    bind = binding.bind_output if output else binding.bind_input
    bind(name, device_type, device_id, NUMPY_TYPES[tensor.dtype], list(tensor.shape), tensor.data_ptr())


class CacheBuffers:
    """Two sets of KV-cache buffers for a graph with ``past_key_values.{i}.key/value`` inputs and
    ``present.{i}.key/value`` outputs (:func:`csm_export.graphs.cache_names`): a call reads ``past`` from
    one set and writes ``present`` into the other (:meth:`bind`), then :meth:`swap` makes that the one read."""

    def __init__(self, layers: int, shape, dtype: torch.dtype, device) -> None:
        self.past_names, self.present_names = cache_names(layers)
        self.sets = [[torch.zeros(shape, dtype=dtype, device=device) for _ in self.past_names] for _ in range(2)]
        self.current = 0

    def bind(self, binding) -> None:
        """Bind the current set as the ``past`` inputs and the other as the ``present`` outputs."""
        for name, tensor in zip(self.past_names, self.sets[self.current]):
            bind_tensor(binding, name, tensor)
        for name, tensor in zip(self.present_names, self.sets[1 - self.current]):
            bind_tensor(binding, name, tensor, output=True)

    def swap(self) -> None:
        """After a call: what it wrote is what the next call reads."""
        self.current = 1 - self.current

    def restart(self) -> None:
        """Read the first set next (graphs that mask the slots after the last written position)."""
        self.current = 0

    def zero(self) -> None:
        """Zero both sets (graphs that read every slot)."""
        for buffers in self.sets:
            for tensor in buffers:
                tensor.zero_()
