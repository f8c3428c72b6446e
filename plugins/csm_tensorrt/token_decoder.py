"""One engine of a token decoder: ``input_ids`` at ``position_ids`` over a static cache -> last logits.

The reply LM's ``causal_lm`` graph (:mod:`csm_export.lm_export`) and Whisper's ``whisper_decoder`` graph
(:mod:`csm_export.whisper_export`) are called the same way: inputs ``input_ids`` [1,T] int64 and
``position_ids`` [1,T] (the cache slots written), ``past_key_values.{i}.key/value`` [1,H,L,head_dim] with
a static ``L``, and, for Whisper, inputs that stay fixed over one decoding (``cross.{i}.key/value``);
outputs ``logits`` [1,V] float32 (of the last token) and ``present.{i}.key/value``.

:class:`TokenDecoder` keeps the caches on the GPU in :class:`~csm_tensorrt.runtime.KvPingPong` buffers
(a call reads one set and writes the other) and the fixed inputs in buffers it allocates once (their
owner fills them, e.g. Whisper's cross-attention engine). Slots after the last written position are
masked in the graph, so a restart only rewinds the position: stale values are never read.

With ``cuda_graphs`` a one-token call (the step, once per generated token) is replayed from a CUDA graph,
one per cache parity (:class:`~csm_tensorrt.runtime.GraphedStep`). A call of several tokens (a prompt)
runs eagerly; it sets other shapes on the same execution context, so the captured graphs are dropped
first and the next step captures again (once per prompt).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .runtime import GraphedStep, TrtRunner, TrtRuntimeError, state_buffers

TOKEN_INPUTS = ("input_ids", "position_ids")


class TokenDecoder:
    """``run(input_ids [1,T], start) -> logits [1,V]`` float32 over ``runner``'s engine.

    ``fixed`` names the engine inputs that are neither tokens nor caches: :attr:`fixed` holds a zeroed
    buffer of each (the engine's static shape and dtype) for their owner to fill. Any other input, a
    missing token input or ``logits`` output, or a dynamic axis in a cache or fixed input is an error.
    """

    def __init__(self, runner: TrtRunner, fixed: Sequence[str] = (), cuda_graphs: bool = True) -> None:
        lacking = [n for n in TOKEN_INPUTS if n not in runner.inputs] + [n for n in ("logits",) if n not in runner.outputs]
        if lacking:
            raise TrtRuntimeError(
                f"{runner.name}: the engine has no {', '.join(lacking)}: it is not built from a token-decoder graph "
                "(csm_export.lm_export or csm_export.whisper_export); delete it from the cache to rebuild"
            )
        self.runner = runner
        self.state = state_buffers(runner, 1)
        unknown = sorted(set(runner.inputs) - set(TOKEN_INPUTS) - set(self.state.pairs) - set(fixed))
        if unknown:
            raise TrtRuntimeError(f"{runner.name}: engine inputs {unknown} are neither tokens, caches nor fixed inputs")
        self.fixed: dict[str, torch.Tensor] = {}
        for name in fixed:
            spec = runner.specs.get(name)
            if spec is None or not spec.is_input:
                raise TrtRuntimeError(f"{runner.name}: the engine has no input {name!r}")
            if any(d < 0 for d in spec.shape):
                raise TrtRuntimeError(f"{runner.name}: fixed input {name!r} has a dynamic shape {spec.shape}; it must be static")
            self.fixed[name] = torch.zeros(spec.shape, dtype=spec.dtype, device=runner.device)
        lengths = {tensor.shape[2] for tensor in self.state.current.values()}
        if len(lengths) != 1:
            raise TrtRuntimeError(f"{runner.name}: the caches have different lengths {sorted(lengths)}")
        self.cache_positions: int = lengths.pop()
        self.cuda_graphs = cuda_graphs
        self._graphed = GraphedStep(runner)

    def restart(self) -> None:
        """Start a new sequence: the next call reads the first cache set (its stale slots are masked)."""
        self.state.parity = 0

    def run(self, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        """Write ``input_ids`` [1,T] at positions ``start..start+T-1``; the last token's logits [1,V] float32."""
        runner = self.runner
        t = input_ids.shape[1]
        if start < 0 or start + t > self.cache_positions:
            raise ValueError(f"{runner.name}: positions {start}..{start + t - 1} are outside the cache of {self.cache_positions}")
        inputs = {
            "input_ids": input_ids.to(runner.device, runner.specs["input_ids"].dtype).contiguous(),
            "position_ids": torch.arange(start, start + t, device=runner.device)[None].to(runner.specs["position_ids"].dtype),
        }
        fixed = {**self.state.current, **self.fixed}
        spare = self.state.spare
        if t == 1 and self.cuda_graphs:
            out = self._graphed.run(((1, 1), self.state.parity), inputs, fixed, spare)
            logits = out["logits"].clone()  # the captured buffer: the next replay overwrites it
        else:
            self._graphed.clear()
            logits = runner.run({**inputs, **fixed}, spare)["logits"]
        self.state.swap()
        return logits.float()
