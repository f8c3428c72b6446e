"""The ``csm`` text-to-speech stage: CSM weights, engines from the stage's backend, the core's frame loop.

The stage owns what is the same on every backend (prompt assembly, embeddings, sampling, end of speech,
streaming through Mimi's streaming decoder); the backend chosen for the ``tts`` stage supplies the
``csm`` engines (backbone, depth decoder) and the ``codec`` engine.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from csm_core.devices import resolve_device
from csm_core.errors import CsmError
from csm_core.generation.embedder import FrameEmbedder
from csm_core.generation.frames import SilenceGuard, generate_frames
from csm_core.generation.prompt import Segment as PromptSegment
from csm_core.generation.prompt import build_prompt
from csm_core.generation.sampling import SamplingParams
from csm_core.records import StageContext
from csm_core.stages import SpeechChunk, SpeechRequest
from csm_pytorch.sources import load_csm_weights, load_mimi_model


def shared_codec(context: StageContext, device: str):
    """The Mimi codec engine on ``context``'s backend, loaded once per pipeline."""
    key = ("codec", context.backend.name, device)
    return context.resource(key, lambda: context.engine("codec", load_mimi_model(context.settings, device)))


class CsmSpeaker:
    """Speaks text with CSM, yielding audio frame by frame (80 ms each) as it is generated."""

    def __init__(self, context: StageContext):
        settings = context.settings
        self.settings = settings
        self.context = context
        self.device = resolve_device(settings.device, settings.allow_fallback, context.report)
        weights = load_csm_weights(settings, self.device)
        context.log.info("CSM: %s on %s (backend %s)", weights.source, self.device, context.backend.name)
        self.args = weights.model.args
        self.tokenizer = weights.tokenizer
        self.embedder = FrameEmbedder.from_model(weights.model)
        self.engines = context.engine("csm", weights.model)
        self.codec = shared_codec(context, self.device)
        if self.codec.num_codebooks != self.args.num_codebooks:
            raise CsmError(
                f"the codec gives {self.codec.num_codebooks} codebooks but CSM expects "
                f"{self.args.num_codebooks}: use the Mimi checkpoint that belongs to this CSM"
            )
        self.sample_rate = self.codec.sample_rate

    def _prompt(self, request: SpeechRequest):
        if not request.text.strip():
            raise CsmError("the text to speak is empty")
        context = [
            PromptSegment(s.speaker, s.text, None if s.codes is None else torch.as_tensor(s.codes, dtype=torch.long))
            for s in request.context
        ]
        try:
            return build_prompt(
                context, request.speaker, request.text, self.tokenizer,
                num_codebooks=self.args.num_codebooks,
                max_frames=request.params.max_frames,
                max_positions=self.engines.backbone.max_positions,
                trim_context=self.settings.generation.trim_context,
            )
        except ValueError as exc:
            raise CsmError(str(exc)) from None

    def speak(self, request: SpeechRequest) -> Iterator[SpeechChunk]:
        prompt = self._prompt(request)
        params = request.params
        sampling = SamplingParams(
            temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
            code_limit=self.codec.codebook_size,  # never sample a code the codec cannot decode
        )
        state = self.codec.init_state(1)
        frames = generate_frames(
            self.engines, self.embedder, prompt,
            max_frames=params.max_frames,
            sampling=sampling,
            seed=params.seed,
            silence_guard=SilenceGuard(self.settings.generation.max_silent_frames),
        )
        for frame in frames:  # [1, K]
            pcm, state = self.codec.decode_step(frame.unsqueeze(-1), state)
            yield SpeechChunk(
                samples=pcm[0, 0].float().cpu().numpy(),
                codes=frame[0].cpu().numpy().astype(np.int64)[:, None],
            )
            del pcm
            self.context.safe_point(self.device)
