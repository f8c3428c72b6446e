"""The reference row: transformers' ``CsmForConditionalGeneration.generate`` on the same weights.

The preset's random weights (seed 0, as the pipeline's cells load them) are converted to the
transformers layout and generate greedily for the same frame count from the same prompt. It times CSM
generation only: transformers' codec is not run (its Mimi here is a dummy of minimal size), so its
rate is codes per second, while pipeline cells also decode every frame to audio with Mimi. It runs on
the device the pipeline cells resolve (``--device``), in float32 with TF32 left as torch's default.
"""

from __future__ import annotations

import time

import torch


class ReferenceSession:
    """transformers' CSM for ``preset``, ready to ``generate()``; mirrors :class:`CellSession`."""

    def __init__(self, preset: str, text: str, frames: int, speaker: int = 0, device: str = "cpu"):
        from transformers import CsmForConditionalGeneration, MimiConfig

        from csm_core.generation import build_prompt
        from csm_model import convert
        from csm_model.presets import build_preset
        from csm_model.sources import PRESET_SEED

        started = time.perf_counter()
        model, tokenizer = build_preset(preset, PRESET_SEED)
        args = model.args
        codec = MimiConfig(hidden_size=16, num_filters=4, codebook_dim=8, vector_quantization_hidden_dimension=8,
                           upsample_groups=16, num_hidden_layers=1, intermediate_size=16, num_attention_heads=2,
                           num_key_value_heads=2, num_quantizers=args.num_codebooks, codebook_size=64)
        self.model = CsmForConditionalGeneration(convert.transformers_config_from_args(args, codec_config=codec))
        state = convert.to_transformers_state_dict(model.state_dict(), args)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        left = [name for name in missing if not name.startswith("codec_model.")]
        if unexpected or left:
            raise RuntimeError(f"reference weights do not match: unexpected {unexpected[:3]}, missing {left[:3]}")
        self.model.eval().to(device)
        self.device = device
        self.args, self.frames = args, frames
        prompt = build_prompt([], speaker, text, tokenizer, num_codebooks=args.num_codebooks,
                              max_frames=frames, max_positions=args.max_seq_len)
        tokens, mask = prompt.tokens[None].to(device), prompt.mask[None].to(device)
        with torch.no_grad():
            text_embeds = self.model.embed_text_tokens(tokens[..., -1])
            audio_embeds = self.model.backbone_model.embed_tokens(tokens[..., :-1])
            self.inputs_embeds = torch.where(mask[..., :1], audio_embeds, text_embeds)
        self.load_seconds = time.perf_counter() - started
        self.precision = "fp32"

    def generate(self) -> tuple[torch.Tensor, float]:
        """(codes [K, F], seconds) of one greedy generation."""
        self._synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            codes = self.model.generate(inputs_embeds=self.inputs_embeds, max_new_tokens=self.frames,
                                        do_sample=False, depth_decoder_do_sample=False)
        self._synchronize()
        seconds = time.perf_counter() - started
        return codes[0].transpose(0, 1).cpu(), seconds

    def _synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.model = None
