"""The ``speech_to_text`` engine of the pytorch backend: a transformers Whisper and its own caches.

:class:`TorchSpeechToText` implements :class:`csm_core.components.SpeechToTextEngine` with the model's
own modules: ``encode`` runs ``model.model.encoder``; ``prefill``/``step`` call the model's ``forward``
with the encoder's output and the transformers cache it returned last time (an ``EncoderDecoderCache``:
self-attention keys/values growing per token, cross-attention keys/values computed on the first call of
a decoding and reused), under the argument name the installed release uses
(:func:`csm_model.hf_compat.cache_kwargs`). These are the calls ``generate`` makes, so the greedy loop
(:mod:`csm_core.generation.speech_decoding`) gives ``generate``'s tokens; the other backends' engines
are held to this one.
"""

from __future__ import annotations

import torch

from csm_core.components import SpeechToText
from csm_core.generation.token_steps import TokenSteps


def check_speech_to_text(component: SpeechToText) -> int:
    """``component.max_target_positions`` when it is within the model's, else ``ValueError``."""
    limit = component.model.config.max_target_positions
    if not 1 <= component.max_target_positions <= limit:
        raise ValueError(
            f"max_target_positions={component.max_target_positions}: must be in 1..{limit} "
            "(the model's max_target_positions)"
        )
    return component.max_target_positions


class TorchSpeechToText(TokenSteps):
    """:class:`~csm_core.components.SpeechToTextEngine` over a ``WhisperForConditionalGeneration`` in PyTorch."""

    def __init__(self, component: SpeechToText) -> None:
        self.max_positions = check_speech_to_text(component)
        self.model = component.model
        parameter = next(self.model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.position = 0
        self._hidden = None
        self._cache = None

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.model.encoder(features.to(self.device, self.dtype)).last_hidden_state

    def reset(self, encoder_hidden: torch.Tensor) -> None:
        self._hidden = encoder_hidden
        self._cache = None
        self.position = 0

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        from csm_model.hf_compat import cache_kwargs, output_cache

        if self._hidden is None:
            raise ValueError("speech_to_text: call reset(encoder_hidden) before prefill or step")
        with torch.inference_mode():
            out = self.model(
                encoder_outputs=(self._hidden,),
                decoder_input_ids=input_ids.to(self.device),
                use_cache=True,
                **cache_kwargs(self.model, self._cache),
            )
        self._cache = output_cache(out)
        self.position += input_ids.shape[1]
        return out.logits[:, -1].float()
