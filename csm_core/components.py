"""The small, fixed interfaces that a backend implements for each model component.

A backend turns a model component (held as a PyTorch module, the source of truth for weights) into an
*engine* with one of these interfaces. Everything that is the same on every backend — embedding sums,
sampling, end-of-speech detection, streaming, context assembly — lives in :mod:`csm_core.generation`
and drives these engines unchanged. Tensors crossing these interfaces are ``torch.Tensor`` on the
engine's device: the tensor currency of the generation loop.

Shapes use ``B`` batch, ``T`` positions, ``D`` backbone width, ``V`` audio vocabulary (2051 for CSM),
``K`` codebooks (32), ``F`` codec frames, ``N`` samples; for the reply LM, ``V`` is its text vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch is imported only where tensors are computed
    import torch

# The component kinds a backend may provide engines for (``Backend.engines`` keys).
CSM = "csm"  # -> CsmEngines(backbone, decoder)
CODEC = "codec"  # -> CodecEngine
CAUSAL_LM = "causal_lm"  # module: a CausalLm record -> CausalLmEngine
SPEECH_TO_TEXT = "speech_to_text"  # module: a SpeechToText record -> SpeechToTextEngine
COMPONENT_KINDS = (CSM, CODEC, CAUSAL_LM, SPEECH_TO_TEXT)


@runtime_checkable
class BackboneEngine(Protocol):
    """The CSM backbone: a Llama-style transformer over summed frame embeddings.

    Holds a static key/value cache of ``max_positions`` positions; writes go to the positions given.
    Returns the last position's hidden state and the codebook-0 logits computed from it.
    """

    max_positions: int

    def reset(self) -> None:
        """Forget the cached sequence (the next call starts a new utterance)."""

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeds`` [B,T,D] float, ``positions`` [B,T] int64 -> (hidden [B,D], c0_logits [B,V])."""

    def step(self, embed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``embed`` [B,1,D], ``position`` [B,1] -> (hidden [B,D], c0_logits [B,V])."""


@runtime_checkable
class DepthDecoderEngine(Protocol):
    """The CSM depth decoder: predicts codebooks 1..K-1 of one frame, one at a time.

    Its cache holds K positions and is reset every frame. Inputs are in the *backbone* width: the engine
    applies the projection to the decoder width itself.
    """

    def reset(self) -> None:
        """Start a new frame."""

    def step(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` [B,T,D], ``positions`` [B,T] -> logits [B,V] of codebook ``positions[:, -1]``.

        The first call of a frame passes T=2: (backbone hidden, embedding of codebook 0) at positions
        (0, 1) and gets codebook 1's logits; call ``i`` (2..K-1) passes the embedding of codebook ``i-1``
        at position ``i`` and gets codebook ``i``'s logits.
        """


class FrameEngine(Protocol):
    """Optional: the depth decoding of a whole frame in one call (``CsmEngines.frame_decoder``).

    A backend that can run a frame's K-1 decoder steps as one unit (a captured CUDA graph, one fused
    graph) offers this; the frame loop then calls :meth:`decode` instead of sampling step by step. It
    must give exactly the codes of :func:`csm_core.generation.frames.decode_frame` for the same inputs:
    the way to guarantee that is to run that very function inside the unit, as the PyTorch backend's
    CUDA graphs do.
    """

    def supports(self, params) -> bool:
        """Whether :meth:`decode` can run under these :class:`~csm_core.generation.SamplingParams`
        (for example greedy only); when it cannot, the frame loop decodes step by step."""

    def decode(self, hidden: torch.Tensor, c0_logits: torch.Tensor, params, generator=None) -> torch.Tensor:
        """Codes [B,K] of one frame from the backbone's ``hidden`` [B,D] and codebook-0 logits [B,V].

        Under sampling, randomness comes only from ``generator`` (a ``torch.Generator``, or None for
        torch's global one), drawn in the order :func:`~csm_core.generation.frames.decode_frame` draws it
        (one :func:`~csm_core.generation.sampling.draw_noise` per codebook, 0 first), so that a seed gives
        the same codes fused or step by step.
        """


class CsmEngines(Protocol):
    """What a backend returns for the ``csm`` component.

    ``frame_decoder`` is a :class:`FrameEngine` where the backend offers whole-frame decoding, else None.
    ``batch_size`` is the rows the engines run now (their KV caches' rows); :meth:`for_batch` says whether
    they can run another number, which is how batched speaking gets engines for its rows. Engines that can
    hold a request per row also implement :class:`RowEngines` (``prefill_row``, ``reset_row``,
    ``step_rows``): continuous batching needs them.
    """

    backbone: BackboneEngine
    decoder: DepthDecoderEngine
    frame_decoder: FrameEngine | None
    batch_size: int

    def for_batch(self, rows: int) -> CsmEngines | None:
        """Engines that run ``rows`` rows: ``self`` when these already do, new engines over the same model
        where the backend can re-allocate its caches (the eager PyTorch engines; the old ones must not be
        used after), or None where the backend runs a fixed batch (exported graphs, captured CUDA graphs,
        TensorRT engines): the caller then says so."""


class RowEngines(Protocol):
    """Optional per-row calls of :class:`CsmEngines`, for continuous batching
    (:class:`csm_core.generation.batch_session.BatchSession`): each request keeps one row of the backbone's
    KV cache (``batch_size`` rows) for its lifetime, joins and leaves while the other rows go on.

    ``per_row_calls`` (default True when absent) is False where the per-row calls would not run what
    ``backbone`` runs (a backbone replaced by a wrapper or a captured graph): the session then serves one
    request at a time through ``backbone``.

    Backends whose engines run a fixed batch (exported ONNX graphs, TensorRT engines, captured CUDA graphs)
    do not offer these; a session then serves one request at a time on them
    (:func:`csm_core.generation.row_engines.row_engines` says so). The eager PyTorch engines do.
    """

    def prefill_row(self, row: int, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill one prompt into cache row ``row``, leaving the other rows as they are: ``embeds``
        [1,T,D], ``positions`` [1,T] -> (hidden [1,D], c0_logits [1,V]). Replaces what the row held."""

    def reset_row(self, row: int) -> None:
        """Forget row ``row``'s request (it may be free afterwards; cheap where the cache is read under a
        position mask, as CSM's static caches are)."""

    def step_rows(self, first: int, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone step of rows ``first..first+B-1``: ``embeds`` [B,1,D] at ``positions`` [B,1] (each
        row at its own position) -> (hidden [B,D], c0_logits [B,V])."""


@runtime_checkable
class CodecEngine(Protocol):
    """The Mimi audio codec: 24 kHz mono PCM <-> K codebooks at 12.5 frames per second."""

    sample_rate: int
    frame_rate: float
    num_codebooks: int
    samples_per_frame: int

    def encode(self, pcm: torch.Tensor) -> torch.Tensor:
        """``pcm`` [B,1,N] float32 in [-1, 1] -> codes [B,K,F] int64."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` [B,K,F] -> pcm [B,1,F*samples_per_frame] (whole utterance, no state kept)."""

    def init_state(self, batch_size: int = 1) -> Any:
        """A fresh streaming-decoder state."""

    def decode_step(self, codes: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Decode the next ``F`` frames given the state of all earlier ones.

        ``codes`` [B,K,F] -> (pcm [B,1,F*samples_per_frame], new state). Concatenating the outputs of
        successive calls equals :meth:`decode` of the concatenated codes.
        """

    # Optional: ``decode_rows(codes [n,K,F], states) -> (pcm [n,1,...], states)`` decodes n independent
    # streams (one single-stream state each, each at its own position) in one call; continuous batching
    # uses it where the codec offers it, and calls decode_step per row where it does not.


@dataclass(frozen=True)
class CausalLm:
    """What a stage hands ``context.engine("causal_lm", ...)``: the model and the size of its cache.

    ``model`` is a transformers causal LM (``...ForCausalLM``, the source of the weights);
    ``max_positions`` is how many positions (prompt + answer) the engine's key/value cache holds.
    """

    model: Any
    max_positions: int


@runtime_checkable
class CausalLmEngine(Protocol):
    """A causal text LM (the reply model) with a key/value cache of ``max_positions`` positions.

    Tokens are appended: ``prefill`` and ``step`` write at the next free positions (0 after
    :meth:`reset`) and return the logits of the *last* token given, float32. Decoding (greedy,
    temperature, top-p) is not the engine's job: :mod:`csm_core.generation.lm_decoding` drives every engine.
    """

    max_positions: int
    position: int  # the number of positions written since reset()

    def reset(self) -> None:
        """Forget the cached sequence (the next token goes to position 0)."""

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` [1,T] int64 -> logits [1,V] of the last of the T tokens."""

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """``token`` [1,1] int64 -> logits [1,V] of the next token."""


@dataclass(frozen=True)
class SpeechToText:
    """What a stage hands ``context.engine("speech_to_text", ...)``: an encoder-decoder speech model.

    ``model`` is a transformers Whisper (``WhisperForConditionalGeneration``, the source of the weights);
    ``max_target_positions`` is how many decoder positions (forced prompt + text) its cache holds.
    """

    model: Any
    max_target_positions: int


@runtime_checkable
class SpeechToTextEngine(Protocol):
    """An encoder-decoder speech recognizer (Whisper): an audio encoder and a text decoder whose
    self-attention cache holds ``max_positions`` positions and whose cross-attention reads one encoding.

    :meth:`encode` turns one window of log-mel features into the encoder's output; :meth:`reset` starts
    a decoding over it (the engine may compute the cross-attention keys and values there, once).
    ``prefill`` and ``step`` append tokens at the next free positions and return the logits of the last
    token given, float32. The token loop (forced prompt, suppressed tokens, greedy choice, stop) is not
    the engine's job: :mod:`csm_core.generation.speech_decoding` drives every engine.
    """

    max_positions: int
    position: int  # the number of decoder positions written since reset()

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [1,n_mels,frames] float (one padded 30 s window) -> encoder hidden [1,S,D]."""

    def reset(self, encoder_hidden: torch.Tensor) -> None:
        """Start decoding over ``encoder_hidden`` (from :meth:`encode`): the next token goes to position 0."""

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` [1,T] int64 -> logits [1,V] of the last of the T tokens."""

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """``token`` [1,1] int64 -> logits [1,V] of the next token."""
