"""TensorRT engines behind the :mod:`csm_core.components` interfaces.

The shared generation loop drives these exactly as it drives the PyTorch and ONNX Runtime engines.
Graph I/O follows :mod:`csm_export.graphs`: caches go in as ``past_key_values.{i}.key/value``
and come out as ``present.{i}.key/value`` (static length), the Mimi decoder state as
``state.<name>`` / ``new_state.<name>``. Caches stay on the GPU in :class:`KvPingPong` buffers.
"""

from __future__ import annotations

import torch

from .runtime import GraphedStep, KvPingPong, TrtRunner, pair_state_names, state_buffers


class _CachedGraph:
    """Calls of graphs with ``inputs_embeds``/``position_ids`` and ping-pong caches."""

    def __init__(self, runners: dict[str, TrtRunner], cuda_graphs: bool) -> None:
        self.runners = runners
        self.cuda_graphs = cuda_graphs
        self._graphed = {name: GraphedStep(r) for name, r in runners.items()}
        self.state: KvPingPong | None = None

    def call(self, which: str, embeds: torch.Tensor, positions: torch.Tensor, graphed: bool) -> dict[str, torch.Tensor]:
        runner = self.runners[which]
        if embeds.ndim != 3 or positions.shape != embeds.shape[:2]:
            raise ValueError(f"embeds must be [B,T,D] and positions [B,T], got {tuple(embeds.shape)} and {tuple(positions.shape)}")
        batch = embeds.shape[0]
        if self.state is None or next(iter(self.state.current.values())).shape[0] != batch:
            self.state = state_buffers(runner, batch)
        inputs = {
            "inputs_embeds": embeds.to(runner.device, runner.specs["inputs_embeds"].dtype).contiguous(),
            "position_ids": positions.to(runner.device, torch.int64).contiguous(),
        }
        spare = self.state.spare
        if graphed and self.cuda_graphs:
            key = (tuple(embeds.shape), self.state.parity)
            out = self._graphed[which].run(key, inputs, self.state.current, spare)
            out = {n: (t if n in spare else t.clone()) for n, t in out.items()}
        else:
            out = runner.run({**inputs, **self.state.current}, spare)
        self.state.swap()
        return out


class TrtBackbone:
    """:class:`~csm_core.components.BackboneEngine`: a prefill engine and a step engine sharing caches."""

    def __init__(self, prefill: TrtRunner, step: TrtRunner, max_positions: int, cuda_graphs: bool = True) -> None:
        self.max_positions = max_positions
        self._graph = _CachedGraph({"prefill": prefill, "step": step}, cuda_graphs)

    def reset(self) -> None:
        if self._graph.state is not None:
            self._graph.state.reset()

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._graph.call("prefill", embeds, positions, graphed=False)
        return out["hidden_states"].float(), out["logits"].float()

    @torch.inference_mode()
    def step(self, embed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._graph.call("step", embed, position, graphed=True)
        return out["hidden_states"].float(), out["logits"].float()


class TrtDepthDecoder:
    """:class:`~csm_core.components.DepthDecoderEngine` over the ``decoder`` engine (T = 2, then 1)."""

    def __init__(self, runner: TrtRunner, cuda_graphs: bool = True) -> None:
        self._graph = _CachedGraph({"decoder": runner}, cuda_graphs)

    def reset(self) -> None:
        if self._graph.state is not None:
            self._graph.state.reset()

    @torch.inference_mode()
    def step(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self._graph.call("decoder", x, positions, graphed=True)["logits"].float()


class TrtCsmEngines:
    """The ``csm`` component on the TensorRT backend.

    A fixed batch of ``batch_size`` rows (the graphs the engines are built from are exported for one row):
    :meth:`for_batch` never re-sizes them.
    """

    frame_decoder = None  # no whole-frame engine

    def __init__(self, backbone: TrtBackbone, decoder: TrtDepthDecoder, batch_size: int = 1) -> None:
        self.backbone, self.decoder = backbone, decoder
        self.batch_size = batch_size

    def for_batch(self, rows: int) -> "TrtCsmEngines | None":
        """``self`` for up to :attr:`batch_size` rows; None for more."""
        return self if rows <= self.batch_size else None


class TrtMimi:
    """:class:`~csm_core.components.CodecEngine` over a Mimi encoder engine and a decoder-step engine.

    ``init_state`` comes from the PyTorch streaming decoder (:mod:`csm_model.mimi_streaming`) so
    the state layout is the one the graph was exported with; ``decode`` streams in chunks of at most
    ``max_decode_frames`` frames.
    """

    def __init__(self, encoder: TrtRunner, decoder_step: TrtRunner, mimi_model, num_codebooks: int, max_decode_frames: int) -> None:
        config = mimi_model.config
        self.encoder, self.decoder_step = encoder, decoder_step
        self.sample_rate: int = config.sampling_rate
        self.frame_rate: float = config.frame_rate
        self.samples_per_frame: int = config.frame_size
        self.num_codebooks = num_codebooks
        self.max_decode_frames = max_decode_frames
        self._mimi = mimi_model
        self._pairs = pair_state_names(decoder_step.inputs, decoder_step.outputs)

    @torch.inference_mode()
    def encode(self, pcm: torch.Tensor) -> torch.Tensor:
        """``pcm`` [B,1,N] -> codes [B,K,ceil(N/1920)]: the encoder step engine (batch 1, one chunk of whole
        frames per call, explicit state) over each row, the end padded with zeros to whole frames."""
        from csm_model.mimi_encoder_streaming import MimiStreamingEncoder

        if pcm.ndim != 3 or pcm.shape[1] != 1 or pcm.shape[2] == 0 or not pcm.is_floating_point():
            raise ValueError(f"pcm must be a float tensor [batch, 1, samples>0], got {tuple(pcm.shape)} {pcm.dtype}")
        frames = -(-pcm.shape[-1] // self.samples_per_frame)
        chunk = self.encoder.specs["pcm"].shape[2]
        pcm = torch.nn.functional.pad(pcm.float(), (0, -pcm.shape[-1] % chunk)).to(self.encoder.device)
        pairs = pair_state_names(self.encoder.inputs, self.encoder.outputs)
        initial = MimiStreamingEncoder(self._mimi, self.num_codebooks).init_state(1).tensors()
        rows = []
        for row in pcm.split(1):
            state = {f"state.{n}": t.to(self.encoder.device) for n, t in initial.items()}
            pieces = []
            for start in range(0, row.shape[-1], chunk):
                out = self.encoder.run({"pcm": row[..., start : start + chunk].contiguous(), **state})
                pieces.append(out["codes"])
                state = {n: out[pairs[n]] for n in pairs}
            rows.append(torch.cat(pieces, dim=-1))
        return torch.cat(rows).to(torch.int64)[..., :frames]

    def init_state(self, batch_size: int = 1):
        from csm_model.mimi_streaming import MimiStreamingDecoder

        state = MimiStreamingDecoder(self._mimi).init_state(batch_size)
        return type(state).from_tensors({n: t.to(self.decoder_step.device) for n, t in state.tensors().items()})

    @torch.inference_mode()
    def decode_step(self, codes: torch.Tensor, state):
        if codes.ndim != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"codes must be [batch, {self.num_codebooks}, frames], got {tuple(codes.shape)}")
        tensors = state.tensors()
        inputs = {"codes": codes.to(self.decoder_step.device, torch.int64), **{f"state.{n}": t for n, t in tensors.items()}}
        out = self.decoder_step.run(inputs)
        new = {n[len("state."):]: out[self._pairs[n]] for n in self._pairs}
        return out["pcm"].float(), type(state).from_tensors(new)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        state = self.init_state(codes.shape[0])
        pieces = []
        for start in range(0, codes.shape[-1], self.max_decode_frames):
            pcm, state = self.decode_step(codes[..., start : start + self.max_decode_frames], state)
            pieces.append(pcm)
        return torch.cat(pieces, dim=-1)
