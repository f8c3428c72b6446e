"""Fixtures shared by every test folder."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile


@pytest.fixture
def write_wav(tmp_path):
    """Write samples ([N] or [N, C]) at a rate to a real WAV (or FLAC) file and return its path."""

    def write(name: str, samples: np.ndarray, sample_rate: int, subtype: str | None = None):
        path = tmp_path / name
        soundfile.write(str(path), samples, sample_rate, subtype=subtype)
        return path

    return write


@pytest.fixture(scope="module")
def lm():
    """A tiny random Llama (transformers) with a wide initialisation, so greedy decoding does not just
    repeat one token: the causal-LM engine tests drive it on every backend."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval()
