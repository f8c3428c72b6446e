"""The ``mimi`` tokenizer stage: speech <-> Mimi codes, on the stage's backend."""

from __future__ import annotations

import numpy as np
import torch

from csm_core.audio import Audio
from csm_core.devices import resolve_device
from csm_core.errors import AudioError
from csm_core.records import StageContext
from csm_model.tts_stage import shared_codec


class MimiTokenizer:
    """Encodes the user's speech once; the sentiment stage and CSM's context reuse the codes."""

    def __init__(self, context: StageContext):
        settings = context.settings
        device = resolve_device(settings.device, settings.allow_fallback, context.report)
        self.codec = shared_codec(context, device)
        self.sample_rate = self.codec.sample_rate
        self._device = device

    def encode(self, audio: Audio) -> np.ndarray:
        """24 kHz audio -> codes [K, F] (F = frames of 80 ms, the last one padded with silence)."""
        if audio.sample_rate != self.sample_rate:
            audio = audio.resampled(self.sample_rate)
        if len(audio.samples) == 0:
            raise AudioError("cannot tokenize empty audio")
        pcm = torch.from_numpy(np.ascontiguousarray(audio.samples)).to(self._device).view(1, 1, -1)
        return self.codec.encode(pcm)[0].cpu().numpy()

    def decode(self, codes: np.ndarray) -> Audio:
        pcm = self.codec.decode(torch.as_tensor(codes, dtype=torch.long, device=self._device).unsqueeze(0))
        return Audio(pcm[0, 0].float().cpu().numpy(), self.sample_rate)
