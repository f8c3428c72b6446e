"""The result of a run: ``OUTPUT_DIR/final/``, a CSM checkpoint in the transformers layout.

It holds the trained weights (LoRA adapters merged), the text tokenizer and the Mimi codec the clips
were encoded with, written by :func:`csm_model.presets.write_transformers_layout` (the writer of
``save_preset``), so ``csmctl say -w OUTPUT_DIR/final`` speaks with it on every backend: the codec is
found inside the checkpoint. ``training.json`` beside it says where it came from. The folder is
written under a temporary name and renamed into place, replacing an earlier result only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from csm_model.model import Csm
from csm_model.presets import write_transformers_layout

__all__ = ["FINAL", "save_final"]

FINAL = "final"


def save_final(output_dir: Path, model: Csm, tokenizer, codec, info: dict) -> Path:
    """Write ``model`` with ``tokenizer`` and ``codec`` (a transformers ``MimiModel``) to ``output_dir/final``."""
    final = output_dir / FINAL
    tmp = output_dir / f".tmp-{FINAL}"
    old = output_dir / f".old-{FINAL}"
    shutil.rmtree(tmp, ignore_errors=True)
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    write_transformers_layout(state, model.args, tokenizer, codec.to("cpu"), tmp)
    tokenizer.save(tmp)
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
