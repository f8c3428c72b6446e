"""Running a deserialized TensorRT engine on torch CUDA tensors.

:class:`TrtRunner` binds torch tensors by address (``set_input_shape``/``set_tensor_address``) and
enqueues on torch's current stream (``execute_async_v3``), so no copies leave the GPU and torch's
stream-ordered allocator keeps buffers alive correctly. :class:`KvPingPong` keeps a graph's caches
on the GPU between calls: each call reads the ``past`` buffers and writes ``present`` into the other
set, then the two swap. :class:`GraphedStep` captures a fixed-shape call in a ``torch.cuda.CUDAGraph``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from csm_core.errors import CsmError


class TrtRuntimeError(CsmError):
    """An engine could not be deserialized or failed to run."""


def pair_state_names(inputs: Sequence[str], outputs: Sequence[str]) -> dict[str, str]:
    """Input -> output name of each state carried from one call to the next.

    ``past_key_values.{i}.key`` pairs with ``present.{i}.key``; ``state.<x>`` with ``new_state.<x>``.
    An input of one of these forms without its output is an error (the graph would lose its state).
    """
    pairs: dict[str, str] = {}
    for name in inputs:
        for prefix, out_prefix in (("past_key_values.", "present."), ("state.", "new_state.")):
            if name.startswith(prefix):
                partner = out_prefix + name[len(prefix):]
                if partner not in outputs:
                    raise TrtRuntimeError(f"state input {name!r} has no output {partner!r} to carry it forward")
                pairs[name] = partner
    return pairs


def torch_dtype(trt, dtype) -> torch.dtype:
    """The torch dtype of a ``trt.DataType``."""
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.uint8: torch.uint8,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise TrtRuntimeError(f"unsupported engine tensor dtype {dtype}")
    return table[dtype]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    is_input: bool
    dtype: torch.dtype
    shape: tuple[int, ...]  # -1 for dynamic axes


class TrtRunner:
    """One engine and one execution context on ``device`` (a ``torch.device`` of type cuda)."""

    def __init__(self, engine_bytes: bytes, device: torch.device, name: str) -> None:
        import tensorrt as trt

        self.name, self.device = name, torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise TrtRuntimeError(
                    f"TensorRT could not deserialize the {name} engine (built by another TensorRT version or "
                    "for another GPU?): delete it from the cache to rebuild"
                )
            self.context = self.engine.create_execution_context()
        self.specs: dict[str, TensorSpec] = {}
        for index in range(self.engine.num_io_tensors):
            tensor = self.engine.get_tensor_name(index)
            self.specs[tensor] = TensorSpec(
                name=tensor,
                is_input=self.engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT,
                dtype=torch_dtype(trt, self.engine.get_tensor_dtype(tensor)),
                shape=tuple(self.engine.get_tensor_shape(tensor)),
            )
        self.inputs = [s.name for s in self.specs.values() if s.is_input]
        self.outputs = [s.name for s in self.specs.values() if not s.is_input]
        self._keep: list[torch.Tensor] = []

    def bind(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Set shapes and addresses for ``inputs``; allocate the outputs not given. Returns all outputs."""
        missing = sorted(set(self.inputs) - set(inputs))
        if missing:
            raise TrtRuntimeError(f"{self.name}: missing engine inputs {missing}")
        self._keep = []
        for name in self.inputs:
            tensor = inputs[name]
            spec = self.specs[name]
            if tensor.dtype != spec.dtype or tensor.device != self.device or not tensor.is_contiguous():
                tensor = tensor.to(self.device, spec.dtype).contiguous()
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise TrtRuntimeError(f"{self.name}: input {name!r} shape {tuple(tensor.shape)} is outside the engine's profile")
            self._set_address(name, tensor)
        result = dict(outputs or {})
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if name not in result:
                result[name] = torch.empty(shape, dtype=self.specs[name].dtype, device=self.device)
            elif tuple(result[name].shape) != shape:
                raise TrtRuntimeError(f"{self.name}: output buffer {name!r} is {tuple(result[name].shape)}, the engine writes {shape}")
            self._set_address(name, result[name])
        return result

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.numel() == 0:  # an empty tensor still needs a valid address
            tensor = torch.empty(1, dtype=tensor.dtype, device=self.device)
        self._keep.append(tensor)
        self.context.set_tensor_address(name, tensor.data_ptr())

    def enqueue(self) -> None:
        """Run with the bound tensors on torch's current stream (asynchronously)."""
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise TrtRuntimeError(f"{self.name}: execute_async_v3 failed (see the TensorRT log)")

    def run(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        result = self.bind(inputs, outputs)
        self.enqueue()
        return result


class KvPingPong:
    """Two sets of state buffers on the GPU: calls read ``current`` and write ``spare``, then swap.

    ``pairs`` maps state input -> output name; ``shapes``/``dtypes`` give each state input's full
    (static) shape and engine dtype. Buffers start zeroed.
    """

    def __init__(self, pairs: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, torch.dtype], device) -> None:
        self.pairs = dict(pairs)
        self._sets = [
            {name: torch.zeros(shapes[name], dtype=dtypes[name], device=device) for name in self.pairs}
            for _ in range(2)
        ]
        self.parity = 0

    @property
    def current(self) -> dict[str, torch.Tensor]:
        """State inputs for the next call, by input name."""
        return self._sets[self.parity]

    @property
    def spare(self) -> dict[str, torch.Tensor]:
        """Buffers the next call writes, by *output* name."""
        other = self._sets[1 - self.parity]
        return {self.pairs[name]: other[name] for name in self.pairs}

    def swap(self) -> None:
        self.parity = 1 - self.parity

    def reset(self) -> None:
        for buffers in self._sets:
            for tensor in buffers.values():
                tensor.zero_()
        self.parity = 0


def state_buffers(runner: TrtRunner, batch: int) -> KvPingPong:
    """:class:`KvPingPong` buffers for every state input of ``runner``'s engine (paired by
    :func:`pair_state_names`), ``batch`` rows where axis 0 is dynamic; a state input with another
    dynamic axis is an error (caches must have a static length)."""
    pairs = pair_state_names(runner.inputs, runner.outputs)
    shapes = {n: tuple(batch if (axis == 0 and d < 0) else d for axis, d in enumerate(runner.specs[n].shape)) for n in pairs}
    for name, shape in shapes.items():
        if any(d < 0 for d in shape):
            raise TrtRuntimeError(f"{runner.name}: state input {name!r} has a dynamic length {shape}: caches must be static")
    return KvPingPong(pairs, shapes, {n: runner.specs[n].dtype for n in pairs}, runner.device)


class GraphedStep:
    """Replays one fixed-shape engine call as a CUDA graph: one graph per (input shapes, parity).

    The first call with a new key runs the engine once eagerly (TensorRT allocates and initialises on
    its first enqueue) and then captures it; later calls copy the inputs into the captured buffers
    and replay. Outputs are the captured output buffers: copy them before the next call.
    """

    def __init__(self, runner: TrtRunner) -> None:
        self.runner = runner
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}

    def run(
        self,
        key: tuple,
        inputs: Mapping[str, torch.Tensor],
        fixed: Mapping[str, torch.Tensor],
        outputs: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``inputs`` are copied into captured buffers; ``fixed`` (state buffers) and ``outputs`` are
        bound by address and must be the same tensors on every call with the same ``key``.
        Calls are idempotent in the state: they read ``fixed`` and write ``outputs``."""
        entry = self._graphs.get(key)
        if entry is None:
            static_inputs = {name: t.clone() for name, t in inputs.items()}
            result = self.runner.run({**static_inputs, **fixed}, outputs)  # warm-up, eager
            graph = torch.cuda.CUDAGraph()
            torch.cuda.current_stream(self.runner.device).synchronize()
            with torch.cuda.graph(graph):
                self.runner.bind({**static_inputs, **fixed}, result)
                self.runner.enqueue()
            self._graphs[key] = (graph, static_inputs, result)
            graph.replay()
            return result
        graph, static_inputs, result = entry
        for name, tensor in inputs.items():
            static_inputs[name].copy_(tensor)
        graph.replay()
        return result

    def clear(self) -> None:
        """Drop every captured graph: the next call of each key runs eagerly and captures again.

        Call it before running the runner's execution context eagerly with other shapes: that call
        sets new shapes and addresses on the context, and a graph is replayed only while the context
        is as it was captured."""
        self._graphs.clear()
