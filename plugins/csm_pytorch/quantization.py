"""Weight-only quantization of the CSM transformer linear layers on the PyTorch backend, with PyTorch's
own quantized CPU kernels.

:func:`apply_weight_quantization` replaces every ``nn.Linear`` inside the backbone's and the depth
decoder's transformer layers (attention q/k/v/o, MLP gate/up/down) by a quantized module, for each part
that ``Settings.weight_quantization`` names. Embeddings, ``codebook0_head``, ``projection``,
``audio_head``, the norms and Mimi keep their float32 weights.

- **8 bits**: ``torch.ao.nn.quantized.dynamic.Linear`` (fbgemm/x86 engine): int8 weights with one scale
  per output channel (rows of ``K`` weights, whatever ``block_size`` says: the kernel has no blocks),
  activations quantized to 8 bits per call (dynamic) and accumulated in int32: the fastest of the int8
  CPU paths compared (``torch._weight_int8pack_mm``, torchao's weight-only tensors; figures in
  docs/optimizers.md).
- **4 bits**: :class:`Int4Linear` over ``torch._weight_int4pack_mm_for_cpu``: codes packed two per byte
  (``torch._convert_weight_to_int4pack_for_cpu``), one bf16 scale per ``block_size`` weights along the
  input dimension (symmetric, the largest-magnitude weight of a block maps to -8), activations cast to
  bf16 for the kernel and the output back to the input's dtype (torchao 0.18 dropped its CPU int4
  layout; the ``_dyn_quant_matmul_4bit`` kernel is for Arm).

A part whose input dimension is below ``block_size`` uses one block per row (as ONNX Runtime's
``MatMulNBits`` does by padding). What is not supported is an error naming what is: weights on a
device other than the CPU, a part that does not compute in float32 (selective-precision), a 4-bit
``block_size`` other than 32/64/128/256, or an input dimension that is not a multiple of the block.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from csm_core.errors import CsmError

PARTS = ("backbone", "decoder")
INT4_GROUP_SIZES = (32, 64, 128, 256)
SUPPORTED = ("the pytorch backend quantizes weights on the CPU, in float32 parts: bits = 8 (fbgemm dynamic int8 "
             "linear) or bits = 4 (torch._weight_int4pack_mm_for_cpu, block_size 32, 64, 128 or 256)")


class Int4Linear(nn.Module):
    """``y = x @ W.T`` with ``W`` [out, in] stored as 4-bit codes, two per byte, and one bf16 scale per
    ``group_size`` weights of a row; computed by ``torch._weight_int4pack_mm_for_cpu`` in bf16."""

    def __init__(self, in_features: int, out_features: int, group_size: int,
                 packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", packed)  # uint8 [out, in / 2]
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # bf16 [in / group_size, out, 2]

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        """Quantize ``linear`` (float32, no bias, on the CPU), symmetric, round to nearest."""
        weight = linear.weight.detach().float()
        out_features, in_features = weight.shape
        blocks = weight.reshape(out_features, in_features // group_size, group_size)
        # The weight of largest magnitude in a block maps to -8: codes use all of -8..7.
        extreme = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
        scale = (extreme / -8.0).squeeze(-1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale).to(torch.bfloat16)
        codes = torch.round(blocks / scale.float().unsqueeze(-1)).clamp(-8, 7).to(torch.int32) + 8
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.reshape(out_features, in_features), 1)
        zeros = torch.zeros_like(scale)  # the kernel computes (code - 8) * scale + zero
        scales_and_zeros = torch.stack((scale.t(), zeros.t()), dim=-1).contiguous()
        return cls(in_features, out_features, group_size, packed, scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales_and_zeros)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size={self.group_size}"


def int8_linear(linear: nn.Linear) -> nn.Module:
    """``linear`` as ``torch.ao.nn.quantized.dynamic.Linear``: int8 weights with per-output-channel scales."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    linear.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        # torch.ao's eager-mode quantization is marked deprecated in favour of torchao, whose CPU paths
        # are slower here (see the module docstring); the kernels themselves are current.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated", category=UserWarning)
        return DynamicLinear.from_float(linear)


def is_quantized_linear(module: nn.Module) -> bool:
    """Whether ``module`` is one of the quantized linear modules this module makes."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return isinstance(module, (Int4Linear, DynamicLinear))


def _group_size(block_size: int, in_features: int, where: str) -> int:
    group = min(block_size, in_features)
    if group not in INT4_GROUP_SIZES or in_features % group:
        raise CsmError(
            f"{where}: 4-bit weights with block_size {block_size} over an input dimension of {in_features} are not "
            f"supported: {SUPPORTED}, and the input dimension a multiple of the block"
        )
    return group


def quantize_part(transformer: nn.Module, bits: int, block_size: int, where: str = "CSM part") -> int:
    """Replace every ``nn.Linear`` under ``transformer.layers`` by its ``bits``-bit module; the count."""
    if bits not in (8, 4):
        raise CsmError(f"{where}: weight quantization with bits = {bits!r} is not supported: {SUPPORTED}")
    targets = [(parent, name, child) for parent in transformer.layers.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear]
    for parent, name, linear in targets:
        if linear.bias is not None:
            raise CsmError(f"{where}: {name} has a bias; the quantized linear modules here take none")
        quantized = int8_linear(linear) if bits == 8 else Int4Linear.from_linear(
            linear, _group_size(block_size, linear.in_features, f"{where} {name}"))
        setattr(parent, name, quantized)
    return len(targets)


def apply_weight_quantization(model, settings, report: Callable[[str], None] | None = None) -> dict[str, int]:
    """Quantize the transformer linear layers of ``model`` (a :class:`csm_model.model.Csm`) in place, per
    ``settings.weight_quantization``; ``{part: layers quantized}`` (empty when nothing is asked for).

    Everything is checked before anything changes; ``report`` is told what was done.
    """
    plan = {part: settings.weight_quantization_of(part) for part in PARTS}
    plan = {part: q for part, q in plan.items() if q is not None}
    for part, q in plan.items():
        transformer = getattr(model, part)
        device, dtype = transformer.norm.weight.device, transformer.dtype
        if device.type != "cpu":
            raise CsmError(f"weight_quantization of the CSM {part} ({q.bits} bits) asked for on {device}: {SUPPORTED}; "
                           "use device = \"cpu\", the onnxruntime backend, or drop weight-quantization")
        if dtype != torch.float32:
            raise CsmError(f"weight_quantization of the CSM {part} ({q.bits} bits) asked for, but the part computes in "
                           f"{dtype}: {SUPPORTED}; selective-precision and weight-quantization do not combine")
    counts = {}
    for part, q in plan.items():
        counts[part] = quantize_part(getattr(model, part), q.bits, q.block_size, f"CSM {part}")
        if report is not None:
            report(f"pytorch: CSM {part}: {counts[part]} linear layers hold {q.bits}-bit weights"
                   + (f" (block {q.block_size})" if q.bits == 4 else " (per output channel)"))
    return counts
