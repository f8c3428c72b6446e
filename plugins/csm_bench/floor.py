"""The physical limit of a frame: the weight bytes it must read, over the memory bandwidth.

Generating one frame (80 ms of audio) runs the CSM backbone once and the depth decoder once per
codebook after the first (``K - 1`` passes). Each pass reads every weight of its transformer at least
once, so with weights in memory that is not a cache, the time of a frame is at least::

    floor seconds per frame = weight bytes read per frame / memory bandwidth (bytes/s)

Bytes read per frame, each part at its own precision (``e`` bytes per element: fp32 4, fp16/bf16 2;
the precision plan of :func:`csm_model.sources.csm_part_dtypes` runs the transformer layers of the
backbone and decoder in their precision and keeps embeddings and heads in float32)::

    backbone:   layers x (attention + MLP + 2 norms) + final norm                       at e(backbone)
    decoder:    (K - 1) x [layers x (attention + MLP + 2 norms) + final norm]           at e(decoder)
    heads:      codebook-0 head (D x V) + (K - 1) x [projection (D x d) + one audio head (d x V)]
    embeddings: the K rows (D each) of the frame's codes, gathered for the next backbone step

Weight-quantized parts (``Settings.weight_quantization``; precision ``int8-g128``, ``int4-g32``, ... from
:func:`weight_format`) read their transformer linear layers at ``bits / 8`` bytes per weight plus one
4-byte scale per block (float32 on ONNX Runtime; bf16 scale + bf16 zero on PyTorch's int4 kernel; PyTorch's
int8 kernel keeps one scale per row, so there the floor counts a few % too many bytes), and their norms
in float32::

    int8, block 128:  1 + 4/128 = 1.03 bytes per weight      int4, block 128:  0.5 + 4/128 = 0.53

KV-cache reads and activations are left out: the floor is a lower bound. A run faster than its floor
(a multiple below 1) means the weights were served from CPU caches, not memory: the floor does not bind
for models that small. The bandwidth is given (``--bandwidth-gbs``) or measured by :func:`measure_bandwidth`
with a memory-copy probe, and the report says which.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Mapping

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2}
SCALE_BYTES = 4  # one per block of a quantized weight row
QUANTIZED_PARTS = ("backbone", "decoder")
_QUANTIZED = re.compile(r"^int(8|4)-g(\d+)$")


def weight_format(bits: int, block_size: int) -> str:
    """The precision name of a part whose linear weights hold ``bits`` with one scale per ``block_size``."""
    return f"int{bits}-g{block_size}"


def bytes_per_weight(precision: str) -> float:
    """Bytes read per weight at ``precision``: fp32/fp16/bf16, or a :func:`weight_format` (scales included)."""
    if precision in BYTES_PER_ELEMENT:
        return BYTES_PER_ELEMENT[precision]
    match = _QUANTIZED.match(str(precision))
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(BYTES_PER_ELEMENT)} or "
                         "int8-g<block>/int4-g<block> (a weight-quantized part)")
    return int(match.group(1)) / 8 + SCALE_BYTES / int(match.group(2))


def transformer_parameters(layers: int, dim: int, heads: int, kv_heads: int, mlp_dim: int) -> int:
    """Weights of a Llama-style stack: q/k/v/o projections, gated MLP, two RMSNorms per layer, final norm."""
    head_dim = dim // heads
    attention = dim * heads * head_dim + 2 * dim * kv_heads * head_dim + heads * head_dim * dim
    mlp = 3 * dim * mlp_dim
    return layers * (attention + mlp + 2 * dim) + dim


def transformer_norm_parameters(layers: int, dim: int) -> int:
    """The RMSNorm weights of a stack (two per layer and the final one): never quantized."""
    return layers * 2 * dim + dim


def parameters_read_per_frame(args) -> dict[str, int]:
    """Weights read to generate one frame, by part (see the module docstring).

    ``args`` has :class:`csm_model.model.CsmArgs`' fields.
    """
    k = args.num_codebooks
    backbone = transformer_parameters(
        args.backbone_layers, args.backbone_dim, args.backbone_heads, args.backbone_kv_heads, args.backbone_mlp_dim
    )
    decoder = transformer_parameters(
        args.decoder_layers, args.decoder_dim, args.decoder_heads, args.decoder_kv_heads, args.decoder_mlp_dim
    )
    heads = args.backbone_dim * args.audio_vocab_size + (k - 1) * (
        args.backbone_dim * args.decoder_dim + args.decoder_dim * args.audio_vocab_size
    )
    return {"backbone": backbone, "decoder": (k - 1) * decoder, "heads": heads, "embeddings": k * args.backbone_dim}


def norm_parameters_read_per_frame(args) -> dict[str, int]:
    """Of :func:`parameters_read_per_frame`'s backbone and decoder, the norm weights (the rest is linear layers)."""
    return {"backbone": transformer_norm_parameters(args.backbone_layers, args.backbone_dim),
            "decoder": (args.num_codebooks - 1) * transformer_norm_parameters(args.decoder_layers, args.decoder_dim)}


PARTS = ("backbone", "decoder", "heads", "embeddings")


def precision_label(plan: Mapping[str, str]) -> str:
    """``"fp32"`` when every part has one precision, else ``"backbone bf16, decoder bf16, heads fp32"``."""
    values = {plan[part] for part in PARTS}
    if len(values) == 1:
        return values.pop()
    return f"backbone {plan['backbone']}, decoder {plan['decoder']}, heads {plan['heads']}"


@dataclass(frozen=True)
class Floor:
    """The floor of one model at one precision plan on one machine."""

    precision: str  # see precision_label
    bytes_per_frame: int
    bandwidth_bytes_per_s: float
    bandwidth_source: str  # "given (--bandwidth-gbs)" or "measured (...)"

    @property
    def seconds_per_frame(self) -> float:
        return self.bytes_per_frame / self.bandwidth_bytes_per_s

    @property
    def frames_per_second(self) -> float:
        return self.bandwidth_bytes_per_s / self.bytes_per_frame

    def multiple(self, frames_per_second: float | None) -> float | None:
        """How many times the floor a run at ``frames_per_second`` takes per frame (1.0 = at the limit)."""
        return None if not frames_per_second else self.frames_per_second / frames_per_second

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds_per_frame": self.seconds_per_frame,
                "frames_per_second": self.frames_per_second}


def floor_for(args, precision: str | Mapping[str, str], bandwidth_bytes_per_s: float, bandwidth_source: str) -> Floor:
    """The :class:`Floor` of a model shaped by ``args``.

    ``precision``: one of fp32/fp16/bf16 for every part, or a plan ``{"backbone", "decoder", "heads"}``
    (embeddings follow the heads). The backbone and decoder may also be weight-quantized
    (:func:`weight_format`: their linear layers at that size, their norms in float32).
    """
    plan = dict.fromkeys(PARTS, precision) if isinstance(precision, str) else dict(precision)
    plan.setdefault("embeddings", plan.get("heads"))
    for part in PARTS:
        allowed = part in QUANTIZED_PARTS and _QUANTIZED.match(str(plan.get(part)))
        if plan.get(part) not in BYTES_PER_ELEMENT and not allowed:
            quantized = " or int8-g<block>/int4-g<block>" if part in QUANTIZED_PARTS else ""
            raise ValueError(f"precision of {part}={plan.get(part)!r}: choose one of {', '.join(BYTES_PER_ELEMENT)}{quantized}")
    if not bandwidth_bytes_per_s > 0:
        raise ValueError(f"bandwidth_bytes_per_s={bandwidth_bytes_per_s!r}: must be > 0 (bytes per second)")
    parameters = parameters_read_per_frame(args)
    norms = norm_parameters_read_per_frame(args)
    total = 0.0
    for part, count in parameters.items():
        if plan[part] in BYTES_PER_ELEMENT:
            total += count * BYTES_PER_ELEMENT[plan[part]]
        else:  # quantized linear layers, float32 norms
            total += (count - norms[part]) * bytes_per_weight(plan[part]) + norms[part] * BYTES_PER_ELEMENT["fp32"]
    return Floor(precision_label(plan), round(total), float(bandwidth_bytes_per_s), bandwidth_source)


def measure_bandwidth(device: str = "cpu", megabytes: int | None = None, repeats: int = 5) -> tuple[float, str]:
    """(bytes/s, description) of the best of ``repeats`` copies of a ``megabytes`` buffer on ``device``.

    A copy reads and writes every byte, so it counts ``2 x size`` bytes moved. On ``cuda`` the probe
    uses torch on the GPU with 1 GiB by default (many times a GPU's L2 cache, and long enough for a
    wall-clock timer); on the CPU numpy with 128 MiB (one thread, like a single stream: a lower bound
    of what all cores reach together).
    """
    if megabytes is None:
        megabytes = 1024 if device.startswith("cuda") else 128
    size = megabytes * 1024 * 1024
    if device.startswith("cuda"):
        import torch

        source = torch.empty(size, dtype=torch.uint8, device=device)
        target = torch.empty_like(source)
        target.copy_(source)
        best = float("inf")
        for _ in range(repeats):
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            target.copy_(source)
            torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - started)
        what = f"torch copy of {megabytes} MiB on {torch.cuda.get_device_name(device)}"
    else:
        import numpy as np

        source = np.ones(size, dtype=np.uint8)
        target = np.empty_like(source)
        np.copyto(target, source)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            np.copyto(target, source)
            best = min(best, time.perf_counter() - started)
        what = f"numpy copy of {megabytes} MiB in host memory, best of {repeats}"
    return 2 * size / best, f"measured ({what})"
