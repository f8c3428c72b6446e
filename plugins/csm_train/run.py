"""A whole ``csmctl train`` run from settings: model, tokenizers, data, trainer.

The CSM comes from the core settings' model source (``models.preset`` or ``models.model_path``, as
for ``csmctl say``) through :func:`csm_model.sources.load_csm_weights`, in float32 whatever the
config's inference precision (autocast does the reduced-precision arithmetic). Audio is encoded by
the pipeline's ``tokenizer`` stage, so any backend's codec works; the Mimi model saved with the
result is the one :func:`csm_model.sources.load_mimi_model` gives for the same settings (the one
the tokenizer stage encodes with on the pytorch backend).

``OUTPUT_DIR/data_report.json`` lists every row used or skipped (with why). Under ``torchrun`` only
rank 0 encodes clips; the other processes wait, then read the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from csm_core.config import Settings
from csm_core.devices import resolve_device

from .dataset import TrainingData, prepare_data
from .distributed import Distributed, setup
from .options import TrainOptions
from .pretokenize import Tokenizers
from .trainer import Trainer, TrainResult

__all__ = ["DATA_REPORT", "model_source", "train"]

DATA_REPORT = "data_report.json"


def model_source(settings: Settings) -> str:
    """What the run starts from, for checkpoints and ``training.json``."""
    models = settings.models
    if models.preset:
        return f"preset:{models.preset}"
    return f"path:{Path(models.model_path).resolve()}" if models.model_path else f"repo:{models.repo_id}"


def _data(settings, options, data, output_dir, tokenizer, args, dist: Distributed) -> TrainingData:
    from csm_core.pipeline import Pipeline

    cache_dir = options.cache_dir or output_dir / "pretokenized"
    result = None
    for turn in ("main", "others"):  # rank 0 encodes first; the others then find everything cached
        if (turn == "main") == dist.is_main:
            with Pipeline(settings) as pipeline:
                stage = pipeline.stage("tokenizer")
                tokenizers = Tokenizers(stage.encode, stage.sample_rate, tokenizer.encode, args.num_codebooks, args.max_seq_len)
                result = prepare_data(
                    data, cache_dir, tokenizers, eval_fraction=options.eval_fraction, seed=options.seed,
                    strict=options.strict, shard_size=options.shard_size, progress=options.progress and dist.is_main,
                )
        dist.barrier()
    return result


def train(
    data: Path,
    output_dir: Path,
    settings: Settings,
    options: TrainOptions,
    *,
    resume: bool = False,
    report: Callable[[str], None] = print,
    on_data: Callable[[TrainingData], None] | None = None,
) -> TrainResult:
    """Fine-tune the configured CSM on ``data`` into ``output_dir``; see :mod:`csm_train.trainer`.

    ``on_data`` is called (on rank 0) with the prepared data before training starts.
    """
    from csm_model.sources import load_csm_weights, load_mimi_model

    device = resolve_device(settings.device, settings.allow_fallback, report)
    dist = setup(device)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        weights = load_csm_weights(settings, dist.device, report)
        model = weights.model.set_part_dtypes(torch.float32, torch.float32).float()
        prepared = _data(settings, options, data, output_dir, weights.tokenizer, model.args, dist)
        if dist.is_main:
            prepared.report.write(output_dir / DATA_REPORT)
            if on_data is not None:
                on_data(prepared)
        trainer = Trainer(
            model=model, tokenizer=weights.tokenizer, codec_loader=lambda: load_mimi_model(settings, "cpu"),
            data=prepared, options=options, output_dir=output_dir, dist=dist, source=model_source(settings),
            report=report,
        )
        return trainer.run(resume)
    finally:
        dist.close()
