"""The Mimi audio codec on the PyTorch backend: engine, loader and random-weight presets.

Mimi (kyutai) turns 24 kHz mono PCM into 32 codebooks of 2048 codes at 12.5 frames/s (1920 samples per
frame; codebook 0 semantic, 1..31 acoustic) and back. transformers' ``MimiModel`` is the model
definition and the reference: :class:`TorchMimi` calls its ``encode``/``decode`` for whole utterances
and streams its decoder with :class:`~csm_model.mimi_streaming.MimiStreamingDecoder`.

Weights load from the transformers layout of ``kyutai/mimi`` (``config.json`` + ``model.safetensors``),
from a directory or the local Hugging Face cache (never downloaded). Presets of random weights
(``tiny``, ``small``, ``real``) stand in where no weights are available; speed does not depend on them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import MimiConfig, MimiModel

from csm_core.errors import CsmError
from csm_core.hf_cache import hf_hub_cache_dir
from csm_model.hf_compat import mimi_codebooks, mimi_encode_streaming, reset_codebook_caches
from csm_model.mimi_streaming import MimiDecoderState, MimiStreamingDecoder, split_state, stack_states

__all__ = [
    "MIMI_PRESETS",
    "MimiDecoderState",
    "MimiEncoderState",
    "MimiNotFoundError",
    "TorchMimi",
    "find_mimi",
    "load_mimi",
    "mimi_config",
    "random_mimi",
    "save_random_mimi",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# Overrides of MimiConfig() (= kyutai/mimi). All keep 24 kHz, 1920 samples per frame, 32 codebooks of 2048.
MIMI_PRESETS: dict[str, dict[str, Any]] = {
    # tests: 1 s encodes and decodes in a fraction of a second; a window of 8 positions (4 frames),
    # 2 key/value heads and layer scales of 1 (not 0.01) so that short tests see the sliding window,
    # grouped-query attention and the transformer's effect on the output clearly.
    "tiny": dict(
        hidden_size=32, num_filters=4, codebook_dim=16, vector_quantization_hidden_dimension=16,
        upsample_groups=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8, layer_scale_initial_scale=1.0,
    ),
    # CPU benchmarks: the real structure at about a quarter of the width and half the depth.
    "small": dict(
        hidden_size=256, num_filters=16, codebook_dim=128, vector_quantization_hidden_dimension=128,
        upsample_groups=256, num_hidden_layers=4, intermediate_size=1024, num_attention_heads=4,
        num_key_value_heads=4,
    ),
    "real": {},
}


class MimiNotFoundError(CsmError, FileNotFoundError):
    """No usable Mimi checkpoint where one was asked for; the message lists where it looked."""


@dataclass
class MimiEncoderState:
    """Streaming-encoder state: transformers' encoder-transformer key/value cache and conv padding cache.

    Both are ``None`` before the first :meth:`TorchMimi.encode_step`, which fills and then updates them.
    """

    cache: Any = None
    padding_cache: Any = None


# --------------------------------------------------------------------------------------------- presets
def mimi_config(preset: str = "tiny") -> MimiConfig:
    """The ``MimiConfig`` of a preset: ``tiny`` (tests), ``small`` (CPU benchmarks), ``real`` (kyutai/mimi)."""
    if preset not in MIMI_PRESETS:
        raise ValueError(f"unknown Mimi preset {preset!r}: choose one of {', '.join(MIMI_PRESETS)}")
    return MimiConfig(**MIMI_PRESETS[preset])


def random_mimi(preset: str = "tiny", seed: int = 0, config: MimiConfig | None = None) -> MimiModel:
    """A ``MimiModel`` of the preset's size (or of ``config``) with random weights, the same for the same
    seed (eval mode).

    transformers initializes every codebook to zeros (all codes decode alike and encode to 0), so the
    codebooks get random unit-normal centroids here; the global RNG is left as it was.
    """
    config = mimi_config(preset) if config is None else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MimiModel(config)
        for codebook in mimi_codebooks(model):
            codebook.embed_sum.normal_()
            codebook.cluster_usage.fill_(1.0)
    reset_codebook_caches(model)
    return model.eval()


def save_random_mimi(preset: str, directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write :func:`random_mimi` in the transformers layout (config.json + model.safetensors); returns the dir."""
    directory = Path(directory)
    random_mimi(preset, seed).save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------- loading
def _is_checkpoint(directory: Path) -> bool:
    return (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()


def find_mimi(
    model_path: str | os.PathLike | None = None,
    repo_id: str = "kyutai/mimi",
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The directory of a Mimi checkpoint in the transformers layout, found without downloading.

    Looks in ``model_path`` if given (a checkpoint directory, or a file inside one), else in the Hugging
    Face cache (``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``/hub / ``~/.cache/huggingface/hub``):
    the snapshot that ``refs/main`` names, then any other snapshot. Raises :class:`MimiNotFoundError`
    listing every place it looked.
    """
    looked: list[str] = []
    if model_path is not None:
        path = Path(model_path).expanduser()
        directory = path.parent if path.is_file() else path
        if _is_checkpoint(directory):
            return directory
        looked.append(f"{directory} (model_path: needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    else:
        repo_dir = Path(cache_dir).expanduser() if cache_dir else hf_hub_cache_dir()
        repo_dir = repo_dir / ("models--" + repo_id.replace("/", "--"))
        snapshots = repo_dir / "snapshots"
        ref = repo_dir / "refs" / "main"
        candidates = [snapshots / ref.read_text().strip()] if ref.is_file() else []
        if snapshots.is_dir():
            candidates += sorted(p for p in snapshots.iterdir() if p not in candidates)
        for directory in candidates:
            if _is_checkpoint(directory):
                return directory
            looked.append(f"{directory} (cached snapshot without {CONFIG_NAME} + {WEIGHTS_NAME})")
        if not candidates:
            looked.append(f"{snapshots} (Hugging Face cache of {repo_id}: no snapshot)")
    raise MimiNotFoundError(
        "no Mimi checkpoint found; looked in:\n  " + "\n  ".join(looked)
        + f"\nPass the directory of a transformers-layout checkpoint (e.g. a download of {repo_id}), "
        "or write random weights with csm_model.mimi.save_random_mimi(preset, directory)."
    )


def load_mimi(
    path_or_dir: str | os.PathLike,
    num_codebooks: int = 32,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> "TorchMimi":
    """Load a transformers-layout Mimi checkpoint (a directory, or a file in it) as a :class:`TorchMimi`.

    Raises :class:`MimiNotFoundError` for a missing directory or file, :class:`CsmError` for a config
    that is not Mimi's or weights that do not load (corrupt, truncated, or missing tensors).
    """
    directory = find_mimi(path_or_dir)
    try:
        model_type = json.loads((directory / CONFIG_NAME).read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CsmError(f"{directory / CONFIG_NAME} is not a readable JSON config: {exc}") from exc
    if model_type != "mimi":
        raise CsmError(f"{directory / CONFIG_NAME} has model_type {model_type!r}, not 'mimi': not a Mimi checkpoint")
    try:
        model, info = MimiModel.from_pretrained(
            directory, local_files_only=True, dtype=dtype, output_loading_info=True
        )
    except Exception as exc:  # safetensors / transformers raise many types for a damaged file
        raise CsmError(f"could not load the Mimi checkpoint in {directory}: {type(exc).__name__}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CsmError(
            f"the Mimi checkpoint in {directory} lacks {len(missing)} weights (e.g. {missing[:3]}): "
            "it is incomplete or not a MimiModel checkpoint"
        )
    return TorchMimi(model.to(device).eval(), num_codebooks=num_codebooks)


# ---------------------------------------------------------------------------------------------- engine
class TorchMimi:
    """:class:`csm_core.components.CodecEngine` over a transformers ``MimiModel`` (eval mode, no grad).

    ``encode``/``decode`` call the model's own ``encode``/``decode`` (whole utterances);
    ``init_state``/``decode_step`` stream the decoder with an explicit :class:`MimiDecoderState`.
    Tensors live on the model's device; PCM is in the model's dtype.
    """

    def __init__(self, model: MimiModel, num_codebooks: int = 32):
        config = model.config
        low, high = config.num_semantic_quantizers, config.num_quantizers
        if not isinstance(num_codebooks, int) or not low <= num_codebooks <= high:
            raise ValueError(f"num_codebooks must be an int in [{low}, {high}] for this Mimi, got {num_codebooks!r}")
        reset_codebook_caches(model)
        self.model = model.eval()
        self.num_codebooks = num_codebooks
        self.sample_rate: int = config.sampling_rate
        self.frame_rate: float = config.frame_rate
        self.samples_per_frame: int = config.frame_size
        self.codebook_size: int = config.codebook_size
        self._streaming: MimiStreamingDecoder | None = None  # built on first use: some configs cannot stream

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, pcm: torch.Tensor) -> torch.Tensor:
        """``pcm`` [B,1,N] float in [-1, 1] -> codes [B,K,F] int64, ``F = ceil(N / samples_per_frame)``.

        The end is padded with zeros to a whole number of frames first, so the last frame covers
        the last samples and silence after them.
        """
        pcm = self._check_pcm(pcm)
        pcm = torch.nn.functional.pad(pcm, (0, -pcm.shape[-1] % self.samples_per_frame))
        return self.model.encode(pcm, num_quantizers=self.num_codebooks).audio_codes.to(torch.int64)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` [B,K,F] int64 in [0, codebook_size) -> pcm [B,1,F*samples_per_frame] (no state kept)."""
        codes = self._check_codes(codes)
        return self.model.decode(codes).audio_values

    def init_state(self, batch_size: int = 1) -> MimiDecoderState:
        """A fresh streaming-decoder state for ``batch_size`` streams (see :class:`MimiDecoderState`)."""
        return self._streamer().init_state(batch_size)

    def decode_step(self, codes: torch.Tensor, state: MimiDecoderState) -> tuple[torch.Tensor, MimiDecoderState]:
        """Decode the next ``F`` frames: ``codes`` [B,K,F] -> (pcm [B,1,F*samples_per_frame], new state).

        ``state`` is not modified (keep it to decode again from the same point). Concatenated outputs
        equal :meth:`decode` of the concatenated codes up to float rounding (about 1e-6 relative:
        overlap-adds and attention sums run in another order).
        """
        if not isinstance(state, MimiDecoderState):
            raise TypeError(f"state must be a MimiDecoderState from init_state(), got {type(state).__name__}")
        codes = self._check_codes(codes)
        if codes.shape[0] != state.batch_size:
            raise ValueError(
                f"codes has batch size {codes.shape[0]} but the state was made for {state.batch_size}: "
                "use init_state(batch_size) with the batch size you decode"
            )
        return self._streamer().step(codes, state)

    def decode_rows(self, codes: torch.Tensor, states: list[MimiDecoderState]) -> tuple[torch.Tensor, list[MimiDecoderState]]:
        """:meth:`decode_step` of several independent streams in one call: ``codes`` [n,K,F], ``states``
        one single-stream state each (streams that started at different times: each keeps its own
        position) -> (pcm [n,1,F*samples_per_frame], their next states). Row ``i`` equals
        ``decode_step(codes[i:i+1], states[i])`` up to float rounding of the batched kernels."""
        if len(states) != codes.shape[0] or any(not isinstance(s, MimiDecoderState) or s.batch_size != 1 for s in states):
            raise ValueError(f"decode_rows: give one single-stream state per row of codes ({codes.shape[0]} rows)")
        if len(states) == 1:
            pcm, state = self.decode_step(codes, states[0])
            return pcm, [state]
        pcm, state = self._streamer().step(self._check_codes(codes), stack_states(states))
        return pcm, split_state(state)

    def _streamer(self) -> MimiStreamingDecoder:
        if self._streaming is None:
            self._streaming = MimiStreamingDecoder(self.model)
        return self._streaming

    def init_encoder_state(self) -> MimiEncoderState:
        """A fresh streaming-encoder state (transformers' own caches; see :meth:`encode_step`)."""
        return MimiEncoderState()

    @torch.no_grad()
    def encode_step(self, pcm: torch.Tensor, state: MimiEncoderState) -> tuple[torch.Tensor, MimiEncoderState]:
        """Encode the next whole frames: ``pcm`` [B,1,F*samples_per_frame] -> (codes [B,K,F], state).

        Uses transformers' streaming encoder (conv padding cache + key/value cache); concatenated codes
        equal :meth:`encode` of the concatenated PCM. Unlike the decoder state, these caches are
        updated in place: the state passed in is consumed, returned, and cannot be used to rewind.
        """
        if not isinstance(state, MimiEncoderState):
            raise TypeError(f"state must be a MimiEncoderState from init_encoder_state(), got {type(state).__name__}")
        if isinstance(pcm, torch.Tensor) and pcm.ndim == 3 and pcm.shape[-1] % self.samples_per_frame:
            raise ValueError(
                f"encode_step takes whole frames: samples must be a multiple of {self.samples_per_frame}, "
                f"got {pcm.shape[-1]}; buffer the remainder for the next call"
            )
        pcm = self._check_pcm(pcm)
        codes, state.cache, state.padding_cache = mimi_encode_streaming(
            self.model, pcm, self.num_codebooks, state.cache, state.padding_cache
        )
        return codes.to(torch.int64), state

    def _check_pcm(self, pcm: torch.Tensor) -> torch.Tensor:
        if not isinstance(pcm, torch.Tensor) or pcm.ndim != 3 or pcm.shape[1] != 1 or pcm.shape[2] == 0:
            got = tuple(pcm.shape) if isinstance(pcm, torch.Tensor) else type(pcm).__name__
            raise ValueError(f"pcm must be a tensor [batch, 1, samples] of mono audio with samples > 0, got {got}")
        if not pcm.is_floating_point():
            raise ValueError(f"pcm must be float PCM in [-1, 1], got dtype {pcm.dtype}")
        return pcm.to(self.device, self.dtype)

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"codes must be a tensor [batch, codebooks, frames], got {got}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor (int64), got dtype {codes.dtype}")
        batch, k, frames = codes.shape
        if k != self.num_codebooks or batch == 0 or frames == 0:
            raise ValueError(
                f"codes must be [batch>0, {self.num_codebooks}, frames>0] for this {self.num_codebooks}-codebook Mimi, "
                f"got {tuple(codes.shape)}"
            )
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.codebook_size:
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values in [{low}, {high}]: "
                "strip CSM's special tokens (>= 2048) before decoding"
            )
        return codes.to(self.device, torch.int64)
