"""A tiny Whisper whose random weights are spread wide enough to give varied text and early stops (the
plain tiny checkpoint repeats one token), for the token-parity tests of the speech_to_text engines."""

from __future__ import annotations

import torch


def varied_whisper(directory):
    """The tiny Whisper with wider random weights, saved (with its processor) in ``directory``."""
    from csm_listen.tiny_models import write_tiny_whisper
    from transformers import WhisperForConditionalGeneration

    write_tiny_whisper(directory, seed=3)
    model = WhisperForConditionalGeneration.from_pretrained(directory).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim >= 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 4.0 / weight.shape[-1] ** 0.5)
    model.save_pretrained(directory)
    return directory


def load_whisper(directory):
    """(processor, model in eval mode) of the checkpoint :func:`varied_whisper` wrote in ``directory``."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    return (WhisperProcessor.from_pretrained(directory),
            WhisperForConditionalGeneration.from_pretrained(directory).eval())


def two_decodings(model):
    """The decodings a Whisper engine is checked under: English given, and the language detected among
    three (the varied model's generation config with two more languages)."""
    from csm_core.generation.speech_decoding import whisper_decoding

    several = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    several.lang_to_id = {**several.lang_to_id, "<|fr|>": 70, "<|de|>": 71}
    return (whisper_decoding(model.generation_config, task="transcribe", language="en"),
            whisper_decoding(several, task="transcribe"))  # the second detects the language
