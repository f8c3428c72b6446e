"""The ``whisper`` transcriber stage: speech -> text with a Whisper model from transformers.

The model comes from ``models.asr`` (a local directory or a cached repo id such as
``openai/whisper-tiny``) or, with ``models.preset`` and no ``asr``, a random tiny Whisper (see
:mod:`csm_listen.model_sources`). Audio is resampled to 16 kHz, cut into windows of at most 30 s
(Whisper's input length), turned into log-mel features by the model's ``WhisperProcessor`` and
decoded greedily; the windows' texts are joined.

The model runs as the ``speech_to_text`` engine of the stage's backend (``backends.transcriber``, else
``backend``): ``pytorch`` (:mod:`csm_pytorch.speech_to_text`) or ``onnxruntime`` (encoder, cross-attention
and decoder-with-cache graphs, :mod:`csm_onnxruntime.speech_to_text`), both driven by the same token loop,
:func:`csm_core.generation.speech_decoding.decode_speech`, which gives the token ids of transformers'
``WhisperForConditionalGeneration.generate(do_sample=False, num_beams=1)`` (the forced prompt, language
detection, suppressed tokens, EOS). The generation config's ``return_timestamps`` is not applied: the stage
wants text.

Options, config table ``[options.whisper]`` (:class:`WhisperOptions`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from csm_core.audio import Audio, validate_samples
from csm_core.components import SPEECH_TO_TEXT, SpeechToText
from csm_core.errors import AudioError, ConfigError
from csm_core.generation.speech_decoding import decode_speech, whisper_decoding

WHISPER_SAMPLE_RATE = 16_000
"""Whisper's input rate (Hz)."""
WINDOW_S = 30.0
"""Longest audio one Whisper pass takes (s); longer audio is transcribed window by window."""


class WhisperOptions(BaseModel):
    """``[options.whisper]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str | None = Field(
        None, description="spoken language code ('en'); None lets a multilingual model detect it"
    )
    max_new_tokens: int = Field(128, ge=1, le=440, description="text tokens per 30 s window at most")


class WhisperTranscriber:
    """``transcribe(audio) -> str`` with a Whisper checkpoint; built from a :class:`StageContext`."""

    def __init__(self, context):
        from csm_core.config import plugin_options
        from csm_listen.model_sources import resolve_model_dir, torch_placement

        self.options = plugin_options(context.settings, "whisper", WhisperOptions)
        self.model_dir: Path = resolve_model_dir(context.settings, "asr")
        self.device, self.dtype = torch_placement(context)
        self.processor, self.model = context.resource(
            ("whisper", str(self.model_dir), self.device, self.dtype), lambda: _load(self.model_dir, self.device, self.dtype)
        )
        config = self.model.config
        # generate() counts the forced prompt (<|startoftranscript|><|lang|><|task|><|notimestamps|>)
        # against max_target_positions.
        self.max_new_tokens = min(self.options.max_new_tokens, config.max_target_positions - 5)
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        if self.options.language is not None and not self.multilingual:
            raise ConfigError(
                f"[options.whisper] language = {self.options.language!r}, but the model in {str(self.model_dir)!r} "
                "is English-only: remove the language option or use a multilingual Whisper"
            )
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        kwargs = {"task": "transcribe", "language": self.options.language} if self.multilingual else {}
        try:
            self.decoding = whisper_decoding(self.model.generation_config, language_codes=TO_LANGUAGE_CODE, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"[options.whisper] with the model in {str(self.model_dir)!r}: {exc}") from None
        self.engine = context.engine(SPEECH_TO_TEXT, SpeechToText(self.model, config.max_target_positions))

    def token_ids(self, audio: Audio) -> list[np.ndarray]:
        """The generated text token ids of each 30 s window (forced prompt tokens excluded)."""
        samples = _checked_samples(audio)
        window = int(WINDOW_S * WHISPER_SAMPLE_RATE)
        out = []
        for start in range(0, len(samples), window):
            features = self.processor.feature_extractor(
                samples[start : start + window], sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="pt"
            ).input_features.to(self.device, self.dtype)
            with torch.inference_mode():
                tokens = decode_speech(self.engine, features, self.decoding, self.max_new_tokens).tokens
            out.append(_text_tokens(np.asarray(tokens, dtype=np.int64), self.model.generation_config))
        return out

    def transcribe(self, audio: Audio) -> str:
        """What was said in ``audio`` (any rate, mono float in [-1, 1]), special tokens removed."""
        texts = [self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in self.token_ids(audio)]
        return " ".join(t for t in texts if t)


def _load(directory: Path, device: str, dtype):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from csm_listen.model_sources import load_pretrained

    return load_pretrained(
        directory, device, dtype, WhisperProcessor, WhisperForConditionalGeneration,
        "a Whisper model with its processor",
        "models.asr must name a Whisper checkpoint such as openai/whisper-tiny",
    )


def _checked_samples(audio: Audio) -> np.ndarray:
    if not isinstance(audio, Audio):
        raise AudioError(
            f"transcribe() takes a csm_core.audio.Audio, got {type(audio).__name__}: "
            "wrap the samples as Audio(samples, sample_rate)"
        )
    validate_samples(audio.samples, what="audio to transcribe")
    return np.asarray(audio.resampled(WHISPER_SAMPLE_RATE).samples, dtype=np.float32)


def _text_tokens(ids: np.ndarray, generation_config) -> np.ndarray:
    """Drop the forced prompt tokens (present in some transformers versions' output) and the end token."""
    prompt = {generation_config.decoder_start_token_id, getattr(generation_config, "no_timestamps_token_id", None)}
    prompt |= set(getattr(generation_config, "lang_to_id", {}).values()) | set(getattr(generation_config, "task_to_id", {}).values())
    start = 0
    while start < len(ids) and int(ids[start]) in prompt:
        start += 1
    eos = generation_config.eos_token_id
    eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    ids = ids[start:]
    end = next((i for i, t in enumerate(ids) if int(t) in eos), len(ids))
    return ids[:end]
