"""LoRA adapters on CSM's linear layers, through ``peft``, merged back for the result.

:func:`add_lora` wraps the named linear layers of both transformers (``q_proj``, ``k_proj``,
``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj`` by default: what the CSM fine-tunes in
REFERENCES use) in place and freezes every other weight except ``full_weights`` (by default the two
output heads, ``codebook0_head`` and ``audio_head``: a new voice or speaker needs its codes' output
distributions to move, which adapters behind a frozen head and final norm can hardly do); :func:`merge_lora` folds the adapters into
the weights and restores plain ``nn.Linear`` layers, so the model's state dict has its usual names
and the result loads anywhere a CSM checkpoint loads.
"""

from __future__ import annotations

from collections.abc import Sequence

from csm_core.errors import CsmError
from csm_model.model import Csm

__all__ = ["add_lora", "merge_lora", "trainable_parameters"]


def add_lora(
    model: Csm, targets: Sequence[str], rank: int, alpha: float, dropout: float = 0.0, full_weights: Sequence[str] = ()
):
    """Add LoRA adapters to ``model`` in place and unfreeze ``full_weights`` (parameter names or name
    prefixes; one that names nothing is a :class:`CsmError`); returns the ``peft`` tuner that
    :func:`merge_lora` needs."""
    try:
        from peft import LoraConfig, LoraModel
    except ImportError:
        raise CsmError("LoRA needs peft: pip install 'csm-multi[train]' (or train every weight with --full)") from None

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    names = [name for name, _ in model.named_parameters()]
    unknown = [w for w in full_weights if not any(n == w or n.startswith(w + ".") for n in names)]
    if unknown:
        raise CsmError(f"lora_full_weights: {unknown[0]!r} names no CSM parameter (e.g. codebook0_head, audio_head, decoder.norm)")
    tuner = LoraModel(model, config, "default")
    for name, param in model.named_parameters():
        if any(name == w or name.startswith(w + ".") for w in full_weights):
            param.requires_grad_(True)
    return tuner


def merge_lora(tuner) -> Csm:
    """Fold the adapters into the base weights; returns the plain :class:`Csm` (the same object)."""
    return tuner.merge_and_unload(progressbar=False)


def trainable_parameters(model) -> dict[str, object]:
    """``name -> parameter`` of the parameters that train (LoRA: the adapters only)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
