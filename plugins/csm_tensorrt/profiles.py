"""Optimization-profile shapes (min / opt / max) for every dynamic axis of each component's graph.

A TensorRT engine built from a graph with dynamic axes accepts any shape inside the ranges of its
optimization profile and is tuned for the ``opt`` shape. The ranges come from the model's own limits
(``max_seq_len``: the CSM backbone's positions, or the cache size of a token decoder) and from the
``[options.tensorrt]`` table of the config (:class:`TrtOptions`).

Which range a dynamic axis takes is decided by the axis, not by the exporter's symbolic names: axis 0
of every input is the batch; axis 1 of ``inputs_embeds``/``input_ids``/``position_ids`` is the sequence;
axis 2 of ``pcm`` is samples and of ``codes`` frames. Any other dynamic axis is an error that names it.

The token decoders (the reply LM's ``causal_lm`` graph, Whisper's ``whisper_decoder``) take 1..cache-size
tokens per call and are tuned for one token: the step runs once per generated token, the prompt once per
answer. Whisper's encoder and cross-attention graphs have static shapes (one 30 s window): no ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from csm_core.errors import ConfigError

# The components the tensorrt backend builds one engine for each (one ONNX graph each).
BACKBONE_PREFILL = "backbone_prefill"
BACKBONE_STEP = "backbone_step"
DECODER_STEP = "decoder"  # the ONNX Runtime backend's graph name
MIMI_ENCODER = "mimi_encoder"
MIMI_DECODER_STEP = "mimi_decoder_step"
CAUSAL_LM = "causal_lm"  # the reply LM (csm_export.specs.CAUSAL_LM_GRAPH)
WHISPER_ENCODER = "whisper_encoder"  # the transcriber's graphs (csm_export.whisper_export.WHISPER_GRAPHS)
WHISPER_CROSS_KV = "whisper_cross_kv"
WHISPER_DECODER = "whisper_decoder"
WHISPER_COMPONENTS = (WHISPER_ENCODER, WHISPER_CROSS_KV, WHISPER_DECODER)
TOKEN_DECODERS = (CAUSAL_LM, WHISPER_DECODER)  # input_ids [1,T] over a static cache of max_seq_len positions
COMPONENTS = (BACKBONE_PREFILL, BACKBONE_STEP, DECODER_STEP, MIMI_ENCODER, MIMI_DECODER_STEP, CAUSAL_LM,
              *WHISPER_COMPONENTS)

# input name -> (axis, role) of its length axis; axis 0 of every input with rank >= 1 is "batch".
LENGTH_AXES = {
    "inputs_embeds": (1, "sequence"),
    "input_ids": (1, "sequence"),
    "position_ids": (1, "sequence"),
    "pcm": (2, "samples"),
    "codes": (2, "frames"),
}

Shape = tuple[int, ...]
Dim = int | str | None  # a static size, or a symbolic name / None for a dynamic axis


@dataclass(frozen=True)
class AxisRange:
    """The sizes an axis may take: ``min <= opt <= max``, all >= 1."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and v >= 1 for v in (self.min, self.opt, self.max)):
            raise ValueError(f"axis range sizes must be integers >= 1, got {self}")
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"axis range needs min <= opt <= max, got {self}")


@dataclass(frozen=True)
class TrtOptions:
    """The ``[options.tensorrt]`` config table. Sizes in positions, codec frames, or GiB."""

    max_batch_size: int = 1
    opt_batch_size: int = 1
    max_prefill_len: int | None = None  # default: the model's max_seq_len
    opt_prefill_len: int | None = None  # default: min(256, max_prefill_len)
    max_encode_frames: int = 750  # 60 s of speech per Mimi encode call
    opt_encode_frames: int = 125
    max_decode_frames: int = 4  # frames per streaming decode_step call
    workspace_gib: float = 4.0  # builder workspace memory pool limit
    timing_cache: bool = True
    cuda_graphs: bool = True

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> "TrtOptions":
        """Validate ``table`` (unknown keys and bad values raise :class:`ConfigError` naming the key)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(
                f"options.tensorrt.{unknown[0]} is not a tensorrt option: choose from {', '.join(sorted(known))}"
            )
        for key, value in table.items():
            want_bool = key in ("timing_cache", "cuda_graphs")
            if want_bool and not isinstance(value, bool):
                raise ConfigError(f"options.tensorrt.{key} must be true or false, got {value!r}")
            if key == "workspace_gib":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"options.tensorrt.workspace_gib must be a number > 0 (GiB), got {value!r}")
            elif not want_bool and not (value is None and key.endswith("prefill_len")):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"options.tensorrt.{key} must be an integer >= 1, got {value!r}")
        options = cls(**table)
        for low, high in (
            ("opt_batch_size", "max_batch_size"),
            ("opt_prefill_len", "max_prefill_len"),
            ("opt_encode_frames", "max_encode_frames"),
        ):
            lo, hi = getattr(options, low), getattr(options, high)
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"options.tensorrt.{low}={lo} exceeds options.tensorrt.{high}={hi}")
        return options

    @classmethod
    def from_settings(cls, settings) -> "TrtOptions":
        return cls.from_mapping(settings.options.get("tensorrt", {}))

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))


def axis_ranges(
    component: str, options: TrtOptions, *, max_seq_len: int, samples_per_frame: int | None = None
) -> dict[str, AxisRange]:
    """Role -> range for ``component``'s dynamic axes (roles: batch, sequence, samples, frames).

    ``max_seq_len`` is the CSM backbone's positions for the CSM graphs and the cache size (positions)
    for the token decoders :data:`TOKEN_DECODERS`, whose sequence takes 1..max_seq_len, tuned for 1.
    """
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: choose one of {', '.join(COMPONENTS)}")
    ranges = {"batch": AxisRange(1, options.opt_batch_size, options.max_batch_size)}
    if component in TOKEN_DECODERS:
        ranges["sequence"] = AxisRange(1, 1, max_seq_len)  # a prompt of any length that fits; tuned for a step
    elif component in WHISPER_COMPONENTS:
        pass  # static shapes: one window of features in, its encoder states / cross keys and values out
    elif component == BACKBONE_PREFILL:
        longest = options.max_prefill_len if options.max_prefill_len is not None else max_seq_len
        if longest > max_seq_len:
            raise ConfigError(
                f"options.tensorrt.max_prefill_len={longest} exceeds the model's max_seq_len={max_seq_len}: "
                f"a prompt cannot be longer than the backbone's cache; set it to {max_seq_len} or less"
            )
        opt = options.opt_prefill_len if options.opt_prefill_len is not None else min(256, longest)
        if opt > longest:
            raise ConfigError(
                f"options.tensorrt.opt_prefill_len={opt} exceeds the longest prefill {longest} "
                "(max_prefill_len, or the model's max_seq_len)"
            )
        ranges["sequence"] = AxisRange(1, opt, longest)
    elif component == BACKBONE_STEP:
        ranges["sequence"] = AxisRange(1, 1, 1)
    elif component == DECODER_STEP:
        ranges["sequence"] = AxisRange(1, 1, 2)  # T=2 for the frame's first call, then T=1
    elif component == MIMI_ENCODER:
        if not samples_per_frame:
            raise ValueError("axis_ranges(mimi_encoder) needs samples_per_frame")
        ranges["samples"] = AxisRange(
            samples_per_frame,
            options.opt_encode_frames * samples_per_frame,
            options.max_encode_frames * samples_per_frame,
        )
    else:  # MIMI_DECODER_STEP
        ranges["frames"] = AxisRange(1, 1, options.max_decode_frames)
    return ranges


def profile_shapes(
    component: str, inputs: Mapping[str, Sequence[Dim]], ranges: Mapping[str, AxisRange]
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes of each input of ``component``'s graph that has a dynamic axis.

    ``inputs`` maps input name -> its shape from the graph (ints for static axes; a name or ``None``
    for dynamic ones). Inputs with only static axes are left out: they need no profile entry.
    """
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, dims in inputs.items():
        if all(isinstance(d, int) and d >= 0 for d in dims):
            continue
        lows, opts, highs = [], [], []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim >= 0:
                lows.append(dim), opts.append(dim), highs.append(dim)
                continue
            role = _role(name, axis)
            if role is None or role not in ranges:
                raise ValueError(
                    f"{component}: input {name!r} axis {axis} ({dim!r}) is dynamic but has no profile range: "
                    f"only the batch axis (0) and the length axes {sorted(LENGTH_AXES)} may be dynamic; "
                    "export the graph with this axis static"
                )
            r = ranges[role]
            lows.append(r.min), opts.append(r.opt), highs.append(r.max)
        shapes[name] = (tuple(lows), tuple(opts), tuple(highs))
    return shapes


def _role(name: str, axis: int) -> str | None:
    if axis == 0:
        return "batch"
    length = LENGTH_AXES.get(name)
    return length[1] if length and length[0] == axis else None


def onnx_input_shapes(path) -> dict[str, tuple[Dim, ...]]:
    """Input name -> shape (ints, or the symbolic name / ``None``) read from an ONNX file's graph.

    Reads only the graph structure (``load_external_data=False``): cheap for multi-GB models.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, tuple[Dim, ...]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims
        )
    return shapes


def onnx_output_names(path) -> list[str]:
    """The graph's output names, in order (structure only)."""
    import onnx

    return [v.name for v in onnx.load(str(path), load_external_data=False).graph.output]
