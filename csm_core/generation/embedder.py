"""Frame embeddings: what the backbone and the depth decoder read.

A CSM *frame* is a row of ``K + 1`` tokens: K audio codes (one per codebook) and, in the last column, one
text token; a mask of the same shape says which are present. A frame's embedding is the sum of the
present tokens' embeddings, where code ``x`` of codebook ``c`` is row ``c * V + x`` of the audio table
(as in Sesame's ``generator.py``). Text frames have only the text column set, audio frames only the K
codes.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = ["EmbeddingTables", "FrameEmbedder"]


class _Table(Protocol):
    weight: torch.Tensor  # [rows, D], as in ``nn.Embedding``


class _Sizes(Protocol):
    num_codebooks: int


class EmbeddingTables(Protocol):
    """What :meth:`FrameEmbedder.from_model` reads from a model: its text table [text_vocab, D], its
    audio table [K*V, D] (both ``nn.Embedding``-like) and ``args.num_codebooks`` (K)."""

    text_embeddings: _Table
    audio_embeddings: _Table
    args: _Sizes


class FrameEmbedder:
    """Embeds frames with a text table [text_vocab, D] and an audio table [K*V, D] (on the engines' device)."""

    def __init__(self, text_embeddings: torch.Tensor, audio_embeddings: torch.Tensor, num_codebooks: int) -> None:
        if audio_embeddings.shape[0] % num_codebooks:
            raise ValueError(
                f"FrameEmbedder: audio_embeddings has {audio_embeddings.shape[0]} rows, not a multiple of "
                f"num_codebooks={num_codebooks}"
            )
        if text_embeddings.shape[1] != audio_embeddings.shape[1]:
            raise ValueError(
                f"FrameEmbedder: text width {text_embeddings.shape[1]} != audio width {audio_embeddings.shape[1]}"
            )
        self.text_embeddings = text_embeddings
        self.audio_embeddings = audio_embeddings
        self.num_codebooks = num_codebooks
        self.audio_vocab_size = audio_embeddings.shape[0] // num_codebooks
        self.text_vocab_size = text_embeddings.shape[0]
        self._offsets = torch.arange(num_codebooks, device=audio_embeddings.device) * self.audio_vocab_size

    @classmethod
    def from_model(cls, model: EmbeddingTables) -> FrameEmbedder:
        """Share the embedding tables of a CSM model (no copy)."""
        text, audio = model.text_embeddings.weight.detach(), model.audio_embeddings.weight.detach()
        return cls(text, audio, model.args.num_codebooks)

    @property
    def device(self) -> torch.device:
        return self.audio_embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self.audio_embeddings.dtype

    def check_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Raise ValueError unless ``tokens``/``mask`` [..., K+1] fit the vocabularies (present tokens only)."""
        k = self.num_codebooks
        if tokens.shape != mask.shape or tokens.shape[-1] != k + 1:
            raise ValueError(
                f"frame tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must have the same shape "
                f"[..., K+1={k + 1}]"
            )
        audio, text = tokens[..., :k][mask[..., :k]], tokens[..., k][mask[..., k]]
        checks = (("audio code", audio, self.audio_vocab_size), ("text token", text, self.text_vocab_size))
        for name, values, size in checks:
            if values.numel() and (values.min() < 0 or values.max() >= size):
                raise ValueError(
                    f"{name} out of range: found values in [{int(values.min())}, {int(values.max())}], "
                    f"vocabulary size is {size}"
                )

    def embed_frames(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B,T,K+1] int64, ``mask`` [B,T,K+1] bool -> [B,T,D]: the sum of present embeddings."""
        k = self.num_codebooks
        audio = F.embedding(tokens[..., :k] + self._offsets, self.audio_embeddings)  # [B,T,K,D]
        text = F.embedding(tokens[..., k:], self.text_embeddings)  # [B,T,1,D]
        embeds = torch.cat((audio, text), dim=2) * mask.unsqueeze(-1).to(audio.dtype)
        return embeds.sum(dim=2)

    def embed_audio(self, codebook: int, tokens: torch.Tensor) -> torch.Tensor:
        """Codes [B] of one ``codebook`` -> [B,1,D]."""
        return F.embedding(tokens + codebook * self.audio_vocab_size, self.audio_embeddings).unsqueeze(1)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """One audio frame per row: ``codes`` [B,K] -> [B,1,D] (all K codes present, no text)."""
        return F.embedding(codes + self._offsets, self.audio_embeddings).sum(dim=1, keepdim=True)
