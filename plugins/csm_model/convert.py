"""Weight-name and config conversion between our :class:`~csm_model.model.Csm` and two checkpoint layouts.

- **transformers** (``CsmForConditionalGeneration``): the text embedding sits at the top
  (``embed_text_tokens``), the audio embedding inside the backbone (``backbone_model.embed_tokens.
  embed_audio_tokens``, rows offset by ``codebook * V`` exactly like ours) and *again*, tied, as the depth
  decoder's ``depth_decoder.model.embed_tokens`` (a checkpoint may store either or both). ``lm_head`` is
  codebook 0's head, ``depth_decoder.model.inputs_embeds_projector`` our ``projection`` and
  ``depth_decoder.codebooks_head.weight`` our ``audio_head``. ``codec_model.*`` (Mimi) is not part of the
  CSM here and is skipped.
- **Sesame** (``SesameAILabs/csm`` ``models.py``, torchtune ``llama3_2`` layers): ``sa_norm.scale``,
  ``attn.output_proj``, ``mlp.w1/w2/w3`` and *interleaved* RoPE pairs, so ``q_proj``/``k_proj`` rows are
  permuted to and from our rotate-half layout.

Every function is pure: state dict (name -> tensor) in, new state dict out; inputs are never modified.
Missing, unexpected and wrong-shaped tensors raise :class:`StateDictMismatch` naming each of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .model import Csm, CsmArgs

if TYPE_CHECKING:
    from transformers import CsmConfig

__all__ = [
    "StateDictMismatch",
    "expected_shapes",
    "check_state_dict",
    "to_transformers_state_dict",
    "from_transformers_state_dict",
    "to_sesame_state_dict",
    "from_sesame_state_dict",
    "args_from_transformers_config",
    "transformers_config_from_args",
    "args_from_sesame_config",
    "sesame_config_from_args",
    "SESAME_FLAVORS",
]

Tensor = torch.Tensor
StateDict = Mapping[str, Tensor]


class StateDictMismatch(ValueError):
    """A state dict does not fit the expected layout: names the missing, unexpected and wrong-shaped tensors."""

    def __init__(self, layout: str, missing=(), unexpected=(), wrong_shape=()) -> None:
        self.missing, self.unexpected, self.wrong_shape = sorted(missing), sorted(unexpected), sorted(wrong_shape)
        lines = [f"{layout} state dict does not match the model arguments:"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for name, want, got in self.wrong_shape:
            lines.append(f"  wrong shape: {name} expected {tuple(want)}, found {tuple(got)}")
        lines.append("  Check that the config (CsmArgs) belongs to this checkpoint and that the layout is right.")
        super().__init__("\n".join(lines))


def expected_shapes(args: CsmArgs) -> dict[str, tuple[int, ...]]:
    """Our parameter names -> shapes for ``args`` (computed on the meta device, no memory used)."""
    with torch.device("meta"):
        model = Csm(args)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check(layout: str, state: StateDict, shapes: Mapping[str, tuple[int, ...]], optional=()) -> None:
    missing = [n for n in shapes if n not in state and n not in optional]
    unexpected = [n for n in state if n not in shapes]
    wrong = [(n, shapes[n], tuple(state[n].shape)) for n in state if n in shapes and tuple(state[n].shape) != shapes[n]]
    if missing or unexpected or wrong:
        raise StateDictMismatch(layout, missing, unexpected, wrong)


def check_state_dict(state: StateDict, args: CsmArgs) -> None:
    """Raise :class:`StateDictMismatch` unless ``state`` has exactly our names with the shapes of ``args``."""
    _check("csm-multi", state, expected_shapes(args))


# --- name mapping, layer by layer -------------------------------------------------------------------------

# Inside one transformer layer: ours -> transformers, ours -> Sesame (torchtune).
_LAYER_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_LAYER_TO_SESAME = {
    "attn_norm.weight": "sa_norm.scale",
    "attn.q_proj.weight": "attn.q_proj.weight",
    "attn.k_proj.weight": "attn.k_proj.weight",
    "attn.v_proj.weight": "attn.v_proj.weight",
    "attn.o_proj.weight": "attn.output_proj.weight",
    "mlp_norm.weight": "mlp_norm.scale",
    "mlp.gate_proj.weight": "mlp.w1.weight",
    "mlp.up_proj.weight": "mlp.w3.weight",
    "mlp.down_proj.weight": "mlp.w2.weight",
}
_TOP_TO_HF = {
    "text_embeddings.weight": "embed_text_tokens.weight",
    "audio_embeddings.weight": "backbone_model.embed_tokens.embed_audio_tokens.weight",
    "codebook0_head.weight": "lm_head.weight",
    "projection.weight": "depth_decoder.model.inputs_embeds_projector.weight",
    "audio_head": "depth_decoder.codebooks_head.weight",
    "backbone.norm.weight": "backbone_model.norm.weight",
    "decoder.norm.weight": "depth_decoder.model.norm.weight",
}
_HF_PART = {"backbone": "backbone_model", "decoder": "depth_decoder.model"}
_HF_DECODER_AUDIO = "depth_decoder.model.embed_tokens.weight"  # tied to the backbone's audio embeddings
_TOP_TO_SESAME = {
    "backbone.norm.weight": "backbone.norm.scale",
    "decoder.norm.weight": "decoder.norm.scale",
}
_LAYER_NAME = re.compile(r"^(backbone|decoder)\.layers\.(\d+)\.(.+)$")


def _rename(name: str, top: Mapping[str, str], layer: Mapping[str, str], part: Mapping[str, str] | None) -> str:
    if name in top:
        return top[name]
    m = _LAYER_NAME.match(name)
    if m and m.group(3) in layer:
        prefix = part[m.group(1)] if part else m.group(1)
        return f"{prefix}.layers.{m.group(2)}.{layer[m.group(3)]}"
    return name  # same name in both layouts


def _name_map(args: CsmArgs, layout: str) -> dict[str, str]:
    """Our names -> names in ``layout`` ("transformers" or "sesame") for every tensor of ``args``."""
    if layout == "transformers":
        return {n: _rename(n, _TOP_TO_HF, _LAYER_TO_HF, _HF_PART) for n in expected_shapes(args)}
    return {n: _rename(n, _TOP_TO_SESAME, _LAYER_TO_SESAME, None) for n in expected_shapes(args)}


def _convert(state: StateDict, names: Mapping[str, str], fix: Callable[[str, Tensor], Tensor]) -> dict[str, Tensor]:
    return {names[n]: fix(n, t) for n, t in state.items()}


# --- RoPE layout: interleaved pairs (torchtune) <-> rotate-half (ours, transformers) -----------------------


def _heads_of(args: CsmArgs, name: str) -> tuple[int, int] | None:
    """(heads, head_dim) when ``name`` (ours) is a query or key projection, else None."""
    m = _LAYER_NAME.match(name)
    if not m or m.group(3) not in ("attn.q_proj.weight", "attn.k_proj.weight"):
        return None
    part = m.group(1)
    heads = getattr(args, f"{part}_heads" if "q_proj" in name else f"{part}_kv_heads")
    return heads, getattr(args, f"{part}_head_dim")


def _interleaved_to_half(w: Tensor, heads: int, head_dim: int) -> Tensor:
    return w.reshape(heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(heads * head_dim, -1)


def _half_to_interleaved(w: Tensor, heads: int, head_dim: int) -> Tensor:
    return w.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(heads * head_dim, -1)


# --- transformers -----------------------------------------------------------------------------------------


def to_transformers_state_dict(state: StateDict, args: CsmArgs) -> dict[str, Tensor]:
    """Ours -> ``CsmForConditionalGeneration`` names (without ``codec_model.*``).

    The audio embedding appears under both tied names (the same tensor object).
    """
    check_state_dict(state, args)
    out = _convert(state, _name_map(args, "transformers"), lambda n, t: t)
    out[_HF_DECODER_AUDIO] = out[_TOP_TO_HF["audio_embeddings.weight"]]
    return out


def from_transformers_state_dict(
    state: StateDict, args: CsmArgs, *, skip_prefixes: tuple[str, ...] = ("codec_model.",)
) -> dict[str, Tensor]:
    """``CsmForConditionalGeneration`` names -> ours. Tensors under ``skip_prefixes`` are ignored.

    The audio embedding may be stored under the backbone name, the depth decoder's tied name, or both
    (then they must be equal: our ``Csm`` has one table).
    """
    names = _name_map(args, "transformers")
    shapes = expected_shapes(args)
    backbone_audio = _TOP_TO_HF["audio_embeddings.weight"]
    foreign_shapes = {names[n]: s for n, s in shapes.items()}
    foreign_shapes[_HF_DECODER_AUDIO] = shapes["audio_embeddings.weight"]
    state = {n: t for n, t in state.items() if not n.startswith(skip_prefixes)}
    present = [n for n in (backbone_audio, _HF_DECODER_AUDIO) if n in state]
    _check("transformers", state, foreign_shapes, optional=(backbone_audio, _HF_DECODER_AUDIO) if present else ())
    if len(present) == 2 and not torch.equal(state[backbone_audio], state[_HF_DECODER_AUDIO]):
        raise ValueError(
            f"transformers state dict: {backbone_audio} and {_HF_DECODER_AUDIO} differ (untied codebook "
            "embeddings, tie_codebooks_embeddings=False); csm-multi's Csm shares one audio embedding table"
        )
    audio = state[present[0]]
    inverse = {v: k for k, v in names.items()}
    out = {inverse[n]: t for n, t in state.items() if n in inverse}
    out["audio_embeddings.weight"] = audio
    return out


def args_from_transformers_config(config: CsmConfig) -> CsmArgs:
    """``CsmConfig`` (with its ``depth_decoder_config``) -> :class:`CsmArgs`; unsupported settings raise."""
    dec = config.depth_decoder_config
    for name, cfg in (("CsmConfig", config), ("CsmConfig.depth_decoder_config", dec)):
        for field, supported in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if getattr(cfg, field) != supported:
                raise ValueError(f"{name}.{field}={getattr(cfg, field)!r} is not supported (only {supported!r})")
        if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
            raise ValueError(
                f"{name}.head_dim={cfg.head_dim} differs from hidden_size // num_attention_heads="
                f"{cfg.hidden_size // cfg.num_attention_heads}; csm-multi derives head_dim"
            )
    for field, want in (
        ("backbone_hidden_size", config.hidden_size),
        ("num_codebooks", config.num_codebooks),
        ("vocab_size", config.vocab_size),
        ("rms_norm_eps", config.rms_norm_eps),
    ):
        if getattr(dec, field) != want:
            raise ValueError(f"CsmConfig.depth_decoder_config.{field}={getattr(dec, field)!r} must equal {want!r}")
    rope = dict(config.rope_parameters or {})
    if dict(dec.rope_parameters or {}) != rope:
        raise ValueError(
            f"CsmConfig.rope_parameters={rope} and depth_decoder_config.rope_parameters={dec.rope_parameters} "
            "differ; csm-multi uses one RoPE setting for both transformers"
        )
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        raise ValueError(
            f"CsmConfig.rope_parameters rope_type={rope_type!r}: only 'llama3' and 'default' are supported"
        )
    llama3 = {}
    if rope_type == "llama3":
        llama3 = dict(
            rope_factor=float(rope["factor"]),
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    return CsmArgs(
        text_vocab_size=config.text_vocab_size,
        audio_vocab_size=config.vocab_size,
        num_codebooks=config.num_codebooks,
        backbone_layers=config.num_hidden_layers,
        backbone_dim=config.hidden_size,
        backbone_heads=config.num_attention_heads,
        backbone_kv_heads=config.num_key_value_heads,
        backbone_mlp_dim=config.intermediate_size,
        decoder_layers=dec.num_hidden_layers,
        decoder_dim=dec.hidden_size,
        decoder_heads=dec.num_attention_heads,
        decoder_kv_heads=dec.num_key_value_heads,
        decoder_mlp_dim=dec.intermediate_size,
        rope_theta=float(rope.get("rope_theta", config.default_theta)),
        rope_type=rope_type,
        max_seq_len=config.max_position_embeddings,
        norm_eps=config.rms_norm_eps,
        **llama3,
    )


def transformers_config_from_args(args: CsmArgs, **overrides: Any) -> CsmConfig:
    """:class:`CsmArgs` -> ``CsmConfig``. ``overrides`` go to ``CsmConfig`` (e.g. ``codec_config=``)."""
    from transformers import CsmConfig

    rope: dict[str, Any] = {"rope_type": args.rope_type, "rope_theta": args.rope_theta}
    if args.rope_type == "llama3":
        rope.update(
            factor=args.rope_factor,
            low_freq_factor=args.rope_low_freq_factor,
            high_freq_factor=args.rope_high_freq_factor,
            original_max_position_embeddings=args.rope_original_max_position_embeddings,
        )
    depth = dict(
        num_codebooks=args.num_codebooks,
        backbone_hidden_size=args.backbone_dim,
        vocab_size=args.audio_vocab_size,
        hidden_size=args.decoder_dim,
        intermediate_size=args.decoder_mlp_dim,
        num_hidden_layers=args.decoder_layers,
        num_attention_heads=args.decoder_heads,
        num_key_value_heads=args.decoder_kv_heads,
        max_position_embeddings=args.num_codebooks + 1,
        rms_norm_eps=args.norm_eps,
        rope_parameters=dict(rope),
    )
    kwargs: dict[str, Any] = dict(
        num_codebooks=args.num_codebooks,
        vocab_size=args.audio_vocab_size,
        text_vocab_size=args.text_vocab_size,
        hidden_size=args.backbone_dim,
        intermediate_size=args.backbone_mlp_dim,
        num_hidden_layers=args.backbone_layers,
        num_attention_heads=args.backbone_heads,
        num_key_value_heads=args.backbone_kv_heads,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_parameters=dict(rope),
        depth_decoder_config=depth,
        tie_codebooks_embeddings=True,
    )
    kwargs.update(overrides)
    return CsmConfig(**kwargs)


# --- Sesame -----------------------------------------------------------------------------------------------

# The flavors of Sesame's models.py (torchtune llama3_2): all with max_seq_len 2048, rope_base 500000,
# llama3 RoPE scale_factor 32 (low 1, high 4, original context 8192) and norm_eps 1e-5.
SESAME_FLAVORS: dict[str, dict[str, int]] = {
    "llama-1B": dict(layers=16, dim=2048, heads=32, kv_heads=8, mlp_dim=8192),
    "llama-100M": dict(layers=4, dim=1024, heads=8, kv_heads=2, mlp_dim=8192),
}
_SESAME_FIXED = dict(
    rope_theta=500_000.0,
    rope_type="llama3",
    rope_factor=32.0,
    rope_low_freq_factor=1.0,
    rope_high_freq_factor=4.0,
    rope_original_max_position_embeddings=8192,
    max_seq_len=2048,
    norm_eps=1e-5,
)
# csm-multi's extension key of a Sesame config.json: the full CsmArgs of a model that no Sesame flavor
# describes (e.g. the random `tiny` preset). Sesame's own code cannot load such a model.
SESAME_ARGS_KEY = "csm_multi_args"


def _sesame_fix(args: CsmArgs, to_sesame: bool) -> Callable[[str, Tensor], Tensor]:
    def fix(name: str, t: Tensor) -> Tensor:
        heads = _heads_of(args, name)
        if heads is None:
            return t
        return (_half_to_interleaved if to_sesame else _interleaved_to_half)(t, *heads)

    return fix


def to_sesame_state_dict(state: StateDict, args: CsmArgs) -> dict[str, Tensor]:
    """Ours -> Sesame ``models.py`` names, with query/key rows permuted to interleaved RoPE pairs."""
    check_state_dict(state, args)
    return _convert(state, _name_map(args, "sesame"), _sesame_fix(args, to_sesame=True))


def from_sesame_state_dict(state: StateDict, args: CsmArgs) -> dict[str, Tensor]:
    """Sesame ``models.py`` names -> ours, with query/key rows permuted to rotate-half RoPE."""
    names = _name_map(args, "sesame")
    shapes = expected_shapes(args)
    _check("Sesame", state, {names[n]: s for n, s in shapes.items()})
    inverse = {v: k for k, v in names.items()}
    fix = _sesame_fix(args, to_sesame=False)
    return {inverse[n]: fix(inverse[n], t) for n, t in state.items()}


def args_from_sesame_config(config: Mapping[str, Any]) -> CsmArgs:
    """Sesame ``config.json`` (``backbone_flavor``, ``decoder_flavor``, ``text_vocab_size``,
    ``audio_vocab_size``, ``audio_num_codebooks``) -> :class:`CsmArgs`.

    A config written by :func:`sesame_config_from_args` for a non-Sesame shape carries the full arguments
    under ``"csm_multi_args"``; they are used, after checking that the standard keys agree with them.
    """
    required = ("backbone_flavor", "decoder_flavor", "text_vocab_size", "audio_vocab_size", "audio_num_codebooks")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"Sesame config: missing keys {missing} (a Sesame config.json has {list(required)})")
    common = dict(
        text_vocab_size=config["text_vocab_size"],
        audio_vocab_size=config["audio_vocab_size"],
        num_codebooks=config["audio_num_codebooks"],
    )
    if SESAME_ARGS_KEY in config:
        args = CsmArgs.from_dict(dict(config[SESAME_ARGS_KEY]))
        for key, value in common.items():
            if getattr(args, key) != value:
                raise ValueError(
                    f"Sesame config: {SESAME_ARGS_KEY}.{key}={getattr(args, key)} but the config says {value}"
                )
        return args
    parts = {}
    for part in ("backbone", "decoder"):
        flavor = config[f"{part}_flavor"]
        if flavor not in SESAME_FLAVORS:
            raise ValueError(
                f"Sesame config: {part}_flavor={flavor!r} is unknown; choose one of {sorted(SESAME_FLAVORS)}"
            )
        parts.update({f"{part}_{k}": v for k, v in SESAME_FLAVORS[flavor].items()})
    return CsmArgs(**common, **parts, **_SESAME_FIXED)


def sesame_config_from_args(args: CsmArgs) -> dict[str, Any]:
    """:class:`CsmArgs` -> Sesame ``config.json`` dict.

    When a Sesame flavor describes each transformer (and RoPE, ``max_seq_len``, ``norm_eps`` are Sesame's),
    the result is exactly what Sesame writes. Otherwise flavors are named ``"custom"`` and the full
    arguments are added under ``"csm_multi_args"`` (loadable here, not by Sesame's code).
    """
    config: dict[str, Any] = dict(
        text_vocab_size=args.text_vocab_size,
        audio_vocab_size=args.audio_vocab_size,
        audio_num_codebooks=args.num_codebooks,
    )
    standard = all(getattr(args, k) == v for k, v in _SESAME_FIXED.items())
    for part in ("backbone", "decoder"):
        shape = {k: getattr(args, f"{part}_{k}") for k in ("layers", "dim", "heads", "kv_heads", "mlp_dim")}
        flavor = next((name for name, f in SESAME_FLAVORS.items() if f == shape), None)
        standard = standard and flavor is not None
        config[f"{part}_flavor"] = flavor or "custom"
    if not standard:
        config[SESAME_ARGS_KEY] = args.to_dict()
    return config
