"""What every backend shares when generating speech codes with CSM: embeddings, sampling, prompts, the frame loop.

These modules import torch; :mod:`csm_core` itself does not import this package at start-up.
"""

from .embedder import FrameEmbedder
from .frames import SilenceGuard, generate_codes, generate_frames
from .prompt import Prompt, Segment, TextTokenizer, build_prompt
from .sampling import SamplingParams, sample

__all__ = [
    "FrameEmbedder",
    "Prompt",
    "SamplingParams",
    "Segment",
    "SilenceGuard",
    "TextTokenizer",
    "build_prompt",
    "generate_codes",
    "generate_frames",
    "sample",
]
