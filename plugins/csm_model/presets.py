"""Presets of random CSM weights, built in memory or written to disk in the real checkpoint layouts.

No weights can be downloaded where this project is tested, and speed does not depend on weight values,
so three shapes stand in for the real model:

========  ==========================  =========================  ===========  ===============================
preset    backbone (layers x dim,     decoder                    text vocab   for
          heads/kv heads, MLP)
========  ==========================  =========================  ===========  ===============================
tiny      2 x 64, 4/2, 128            2 x 32, 4/2, 64            259          tests: a greedy utterance of a
                                                                              few frames in well under 1 s
small     4 x 512, 8/2, 2048          2 x 256, 4/2, 1024         259          CPU benchmarks (~10-30 frames/s
                                                                              on 2 cores)
csm-1b    16 x 2048, 32/8, 8192       4 x 1024, 8/2, 8192        128256       GPU performance work: Sesame
                                                                              CSM-1B's exact dimensions
========  ==========================  =========================  ===========  ===============================

Every preset keeps CSM's 32 codebooks of 2051 entries (2048 Mimi codes + 3 specials), Llama-3 RoPE
(theta 500000, scale 32) and the backbone's 2048 positions (``tiny``: 512, enough for tests). ``tiny``
still pays for 32 codebooks: a frame is one backbone step and 31 depth-decoder steps, where time goes
to per-step overhead rather than arithmetic. Fewer codebooks would break parity with the Mimi codec's
32, so they stay (speeds per preset: docs/benchmarks.md).

Presets use :class:`~csm_model.text_tokenizer.ByteTextTokenizer` (259 ids), which fits every text
vocabulary here. Weights depend only on ``(preset, seed)`` (:func:`csm_model.model.random_csm`).

:func:`save_preset` writes real files, loadable by :func:`csm_model.checkpoints.load_checkpoint` and
by the original tools:

- ``transformers``: built as transformers' own ``CsmForConditionalGeneration`` and written by its
  ``save_pretrained`` (``config.json`` with ``model_type: csm``, ``depth_decoder_config`` and
  ``codec_config``; ``model.safetensors``; ``generation_config.json``). The codec inside is the Mimi
  preset of the same size (:func:`csm_model.mimi.random_mimi`: ``tiny``/``small``/``real``, same seed).
- ``sesame``: ``config.json`` as Sesame's ``PyTorchModelHubMixin`` writes it + ``model.safetensors``
  with ``models.py`` names. ``csm-1b`` gets Sesame's flavors (``llama-1B``/``llama-100M``) and nothing
  else; the shapes Sesame never defined get the flavor names ``csm-multi-<preset>-backbone`` and
  ``csm-multi-<preset>-decoder`` plus their explicit dimensions under ``csm_multi_args`` (all of
  :class:`~csm_model.model.CsmArgs`), which :mod:`csm_model.convert` reads back; Sesame's own code
  does not know these flavors.
- ``sesame-ckpt``: ``ckpt.pt``, a ``torch.save`` of the Sesame-named state dict (the first CSM-1B
  release), with the same ``config.json`` beside it.

Every layout also gets the preset's ``tokenizer.json`` (+ ``tokenizer_config.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from csm_core.errors import UnknownNameError
from csm_model.convert import (
    SESAME_ARGS_KEY,
    sesame_config_from_args,
    to_sesame_state_dict,
    to_transformers_state_dict,
    transformers_config_from_args,
)
from csm_model.model import Csm, CsmArgs, random_csm
from csm_model.text_tokenizer import ByteTextTokenizer, TextTokenizer

__all__ = [
    "PRESETS", "SAVE_LAYOUTS", "Preset", "build_preset", "get_preset", "save_preset", "sesame_config_for",
    "write_transformers_layout",
]

SAVE_LAYOUTS = ("transformers", "sesame", "sesame-ckpt")


@dataclass(frozen=True)
class Preset:
    """A named CSM shape: its :class:`CsmArgs`, the Mimi preset of matching size, and what it is for."""

    name: str
    args: CsmArgs
    mimi_preset: str
    purpose: str

    @property
    def num_parameters(self) -> int:
        """Parameter count of :class:`Csm` with these args (embeddings included), computed on the meta device."""
        with torch.device("meta"):
            model = Csm(self.args)
        return sum(p.numel() for p in model.parameters())


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "tiny",
            CsmArgs(
                text_vocab_size=ByteTextTokenizer.VOCAB_SIZE,
                backbone_layers=2, backbone_dim=64, backbone_heads=4, backbone_kv_heads=2, backbone_mlp_dim=128,
                decoder_layers=2, decoder_dim=32, decoder_heads=4, decoder_kv_heads=2, decoder_mlp_dim=64,
                max_seq_len=512,
            ),
            mimi_preset="tiny",
            purpose="tests",
        ),
        Preset(
            "small",
            CsmArgs(
                text_vocab_size=ByteTextTokenizer.VOCAB_SIZE,
                backbone_layers=4, backbone_dim=512, backbone_heads=8, backbone_kv_heads=2, backbone_mlp_dim=2048,
                decoder_layers=2, decoder_dim=256, decoder_heads=4, decoder_kv_heads=2, decoder_mlp_dim=1024,
                max_seq_len=2048,
            ),
            mimi_preset="small",
            purpose="CPU benchmarks",
        ),
        Preset(
            "csm-1b",
            CsmArgs(
                text_vocab_size=128_256,
                backbone_layers=16, backbone_dim=2048, backbone_heads=32, backbone_kv_heads=8, backbone_mlp_dim=8192,
                decoder_layers=4, decoder_dim=1024, decoder_heads=8, decoder_kv_heads=2, decoder_mlp_dim=8192,
                max_seq_len=2048,
            ),
            mimi_preset="real",
            purpose="GPU performance work at the real dimensions",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises :class:`UnknownNameError` listing the known ones."""
    if name not in PRESETS:
        raise UnknownNameError("CSM preset", name, list(PRESETS))
    return PRESETS[name]


def build_preset(name: str, seed: int = 0, *, dtype: torch.dtype = torch.float32, device="cpu") -> tuple[Csm, TextTokenizer]:
    """A random-weight :class:`Csm` of preset ``name`` (eval mode, no caches) and its text tokenizer."""
    preset = get_preset(name)
    return random_csm(preset.args, seed, dtype=dtype, device=device), ByteTextTokenizer()


def save_preset(name: str, directory: str | Path, layout: str = "transformers", seed: int = 0) -> Path:
    """Write preset ``name`` with the weights of ``build_preset(name, seed)`` to ``directory`` in ``layout``.

    ``layout`` is ``"transformers"``, ``"sesame"`` or ``"sesame-ckpt"`` (see the module docstring for the
    files). Returns ``directory``. The ``csm-1b`` preset writes about 6 GB (float32).
    """
    preset = get_preset(name)
    if layout not in SAVE_LAYOUTS:
        raise ValueError(f"save_preset: layout={layout!r} is unknown; choose one of {', '.join(SAVE_LAYOUTS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_preset(name, seed)
    state = model.state_dict()
    if layout == "transformers":
        _save_transformers(preset, state, tokenizer, directory, seed)
    else:
        _save_sesame(preset, state, directory, checkpoint=layout == "sesame-ckpt")
    tokenizer.save(directory)
    return directory


def sesame_config_for(preset: Preset) -> dict:
    """The Sesame ``config.json`` of a preset, with preset-named flavors where Sesame has none."""
    config = sesame_config_from_args(preset.args)
    if SESAME_ARGS_KEY in config:
        config["backbone_flavor"] = f"csm-multi-{preset.name}-backbone"
        config["decoder_flavor"] = f"csm-multi-{preset.name}-decoder"
    return config


def _save_sesame(preset: Preset, state: dict, directory: Path, checkpoint: bool) -> None:
    import json

    sesame = {name: t.contiguous() for name, t in to_sesame_state_dict(state, preset.args).items()}
    (directory / "config.json").write_text(json.dumps(sesame_config_for(preset), indent=2) + "\n", encoding="utf-8")
    if checkpoint:
        torch.save(sesame, directory / "ckpt.pt")
    else:
        from safetensors.torch import save_file

        save_file(sesame, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _save_transformers(preset: Preset, state: dict, tokenizer: ByteTextTokenizer, directory: Path, seed: int) -> None:
    """Build transformers' ``CsmForConditionalGeneration`` around our weights and ``save_pretrained`` it."""
    from csm_model.mimi import random_mimi

    write_transformers_layout(state, preset.args, tokenizer, random_mimi(preset.mimi_preset, seed), directory)


def write_transformers_layout(state: dict, args: CsmArgs, tokenizer: TextTokenizer, codec, directory: str | Path) -> Path:
    """Write our ``state`` (a :class:`Csm` state dict of ``args``) with the Mimi ``codec`` (a transformers
    ``MimiModel``) inside, as transformers' ``CsmForConditionalGeneration.save_pretrained`` does.

    The files are those of :func:`save_preset`'s ``transformers`` layout minus the tokenizer (call
    ``tokenizer.save(directory)`` for it); ``tokenizer`` gives the BOS and PAD ids of the config.
    Returns ``directory``. Used by ``csmctl train`` to write a fine-tuned model.
    """
    from transformers import CsmForConditionalGeneration

    directory = Path(directory)
    config = transformers_config_from_args(
        args,
        codec_config=codec.config.to_dict(),
        bos_token_id=tokenizer.bos_id,
        pad_token_id=getattr(tokenizer, "pad_id", None),
    )
    hf_state = to_transformers_state_dict(state, args)
    hf_state.update({f"codec_model.{n}": t for n, t in codec.state_dict().items()})
    # Built on the meta device and filled by assignment: no random init of weights that are replaced anyway.
    with torch.device("meta"):
        hf_model = CsmForConditionalGeneration(config)
    hf_model.load_state_dict(hf_state, strict=True, assign=True)
    hf_model.tie_weights()
    meta = [n for n, p in hf_model.state_dict().items() if p.is_meta]
    if meta:
        raise RuntimeError(f"save_preset: transformers model tensors left unset after loading: {meta[:5]}")
    hf_model.save_pretrained(directory)
    return directory
