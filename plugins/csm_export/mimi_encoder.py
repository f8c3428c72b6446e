"""The Mimi encoder as an ONNX graph: one streaming step over a fixed chunk of whole frames.

transformers' whole-clip ``MimiModel.encode`` does not export (its padding depends on the input
length: ``GuardOnDataDependentSymNode`` with the dynamo exporter, ``aten::diff`` with TorchScript).
The graph here is :class:`csm_model.mimi_encoder_streaming.MimiStreamingEncoder`'s step, with the
state as explicit inputs and outputs, the way ``mimi_decoder_step`` is:

- inputs ``pcm`` [B,1,frames*frame_size] float32 (1 frame = 1920 samples by default) and
  ``state.<name>`` for each tensor of :meth:`MimiEncoderStreamState.tensors` (``state.keys``,
  ``state.values``, ``state.position`` (int64 []), ``state.conv_context.<i>``);
- outputs ``codes`` [B,K,frames] int64 and ``new_state.<name>`` (same shapes as the inputs).

Every shape is static (batch size and chunk fixed at export). A clip is encoded by padding its end
with zeros to whole chunks, feeding ``init_state``'s tensors, then each call's ``new_state.*`` as the
next call's ``state.*``, and concatenating the codes (dropping the frames of a padded final chunk
beyond ``ceil(samples / frame_size)``); the codes equal ``TorchMimi.encode``'s.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from csm_export.artifacts import ArtifactSpec, weights_hash
from csm_export.export import EXPORTER, OPSET, _export

COMPONENT = "mimi_encoder_step"

__all__ = ["COMPONENT", "MimiEncoderStepGraph", "export_mimi_encoder_step", "mimi_encoder_spec"]


class MimiEncoderStepGraph(nn.Module):
    """``(pcm [B,1,F*frame_size], *state) -> (codes [B,K,F], *new_state)``.

    The state tensors are those of :meth:`MimiEncoderStreamState.tensors`, in that order; inputs are
    named ``state.<name>`` and outputs ``new_state.<name>``.
    """

    def __init__(self, mimi, num_codebooks: int, state_names: list[str]) -> None:
        super().__init__()
        from csm_model.mimi_encoder_streaming import MimiStreamingEncoder

        self.mimi = mimi
        self.streamer = MimiStreamingEncoder(mimi, num_codebooks)
        self.state_names = list(state_names)

    def forward(self, pcm: torch.Tensor, *state: torch.Tensor):
        from csm_model.mimi_encoder_streaming import MimiEncoderStreamState

        current = MimiEncoderStreamState.from_tensors(dict(zip(self.state_names, state)))
        codes, new = self.streamer.step(pcm, current)
        tensors = new.tensors()
        return (codes, *(tensors[n] for n in self.state_names))


def export_mimi_encoder_step(mimi, num_codebooks: int, path: Path, batch_size: int = 1, frames: int = 1) -> None:
    """Export the streaming encoder step of a transformers ``MimiModel`` over ``frames`` whole frames
    (static shapes) to ``path``, in float32 whatever the model's dtype, with the exporter and opset of
    :mod:`csm_export.export`."""
    from csm_model.mimi_encoder_streaming import MimiStreamingEncoder

    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    from csm_model.hf_compat import mimi_codebooks, reset_codebook_caches

    mimi = copy.deepcopy(mimi).float().eval()
    reset_codebook_caches(mimi)
    for codebook in mimi_codebooks(mimi):
        codebook.embed  # noqa: B018 - fill each centroid cache now, not while tracing
    streamer = MimiStreamingEncoder(mimi, num_codebooks)
    state = streamer.init_state(batch_size).tensors()
    names = list(state)
    device = state[names[0]].device
    pcm = 0.1 * torch.randn(batch_size, 1, frames * streamer.frame_size, device=device)
    _export(
        MimiEncoderStepGraph(mimi, num_codebooks, names), (pcm, *state.values()), None, path,
        ["pcm", *(f"state.{n}" for n in names)], ["codes", *(f"new_state.{n}" for n in names)],
    )


def mimi_encoder_spec(mimi, num_codebooks: int = 32, batch_size: int = 1, frames: int = 1) -> ArtifactSpec:
    """The spec of the Mimi streaming-encoder graph of a transformers ``MimiModel`` (exported in float32).

    One definition for every backend that uses the graph (ONNX Runtime, the TensorRT builder), so
    they share one cached file; the counterpart of :func:`csm_export.artifacts.mimi_decoder_spec`.
    """
    config = mimi.config
    return ArtifactSpec(
        component=COMPONENT,
        weights_hash=weights_hash(mimi),
        export={"exporter": EXPORTER, "opset": OPSET, "batch_size": batch_size, "dtype": "float32",
                "frames": frames},
        facts={"sample_rate": config.sampling_rate, "codebooks": num_codebooks,
               "cache_size": config.sliding_window or 0, "samples_per_frame": config.frame_size},
    )
