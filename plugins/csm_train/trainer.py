"""The training loop of ``csmctl train``.

One optimizer step:

1. draw ``batch_size`` samples from the resumable order (:mod:`csm_train.order`), split them into
   ``grad_accum`` micro-batches and each micro-batch over the data-parallel processes;
2. count the codes the step scores (backbone and depth decoder, summed over every process and
   micro-batch), then for each micro-batch run the forward pass and back-propagate its cross-entropy
   *sums* divided by those global counts (times the number of processes, which DDP averages over):
   the gradient is that of the whole step's mean loss, however the step is split;
3. clip the gradient norm, set the learning rate (linear warm-up, then cosine or linear decay to 0, or
   constant), AdamW step.

Around it: bf16 autocast on CUDA devices that have it (``precision = "auto"``), gradient
checkpointing, LoRA or full fine-tuning, the eval loss on held-out conversations every
``eval_every`` steps (at step 0 for a baseline, and at the end), ``metrics.jsonl``, checkpoints every
``save_every`` steps and at the end, ``--resume`` from the newest checkpoint with the same data order,
and finally ``OUTPUT_DIR/final/`` in the transformers layout.
"""

from __future__ import annotations

import hashlib
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from csm_core.errors import CsmError
from csm_model.model import Csm

from .batch import Batch, collate
from .checkpoint import ResumeError, latest_checkpoint, load_checkpoint, save_checkpoint
from .dataset import TrainingData
from .distributed import Distributed
from .final import save_final
from .lora import add_lora, merge_lora, trainable_parameters
from .loss import loss_sums
from .metrics import METRICS_FILE, MetricsLog
from .options import TrainOptions
from .order import SampleOrder, draw_generator
from .samples import Sample, sequence_frames

__all__ = ["TrainingModule", "TrainResult", "Trainer", "learning_rate", "autocast_for"]


class TrainingModule(nn.Module):
    """The model as DDP wraps it: a batch in, the (backbone, decoder) cross-entropy sums out."""

    def __init__(self, csm: Csm, checkpointing: bool = False) -> None:
        super().__init__()
        self.csm, self.checkpointing = csm, checkpointing

    def forward(self, tokens, mask, targets, decoder):
        sums = loss_sums(self.csm, Batch(tokens, mask, targets, decoder), self.checkpointing)
        return sums.backbone, sums.decoder


def learning_rate(step: int, options: TrainOptions) -> float:
    """The learning rate of optimizer step ``step`` (1-based): ``lr * step / warmup`` while warming up,
    then ``lr`` scaled by the schedule over the remaining steps (never exactly 0: the last step still
    learns)."""
    warmup = options.warmup
    if step <= warmup:
        return options.lr * step / warmup
    if options.schedule == "constant":
        return options.lr
    progress = (step - warmup) / (options.steps - warmup + 1)
    if options.schedule == "linear":
        return options.lr * (1.0 - progress)
    return options.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def autocast_for(options: TrainOptions, device: str):
    """bf16 autocast where asked for and available (``auto``: CUDA with bf16 support), else none."""
    if options.precision == "fp32":
        return nullcontext()
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if options.precision == "bf16":
            raise CsmError(f"precision = \"bf16\": {torch.cuda.get_device_name(device)} has no bf16; use \"fp32\" or \"auto\"")
        return nullcontext()
    if options.precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class TrainResult:
    final: Path | None
    start_step: int
    steps: int
    losses: list[float] = field(default_factory=list)
    eval_losses: dict[int, float] = field(default_factory=dict)
    saved_at: int = 0


@dataclass
class Trainer:
    """Fine-tunes ``model`` (fp32 weights on ``dist.device``) on ``data``; see the module docstring."""

    model: Csm
    tokenizer: object
    codec_loader: Callable[[], object]
    data: TrainingData
    options: TrainOptions
    output_dir: Path
    dist: Distributed
    source: str
    report: Callable[[str], None] = print

    def __post_init__(self) -> None:
        o = self.options
        per_step = o.grad_accum * self.dist.world_size
        if o.batch_size % per_step:
            raise CsmError(
                f"batch_size {o.batch_size} is not a multiple of grad_accum ({o.grad_accum}) x processes "
                f"({self.dist.world_size}) = {per_step}: every process needs the same number of samples per micro-batch"
            )
        self.k = self.model.args.num_codebooks

    # -- pieces ------------------------------------------------------------------------------------
    def _identity(self) -> dict:
        keys = hashlib.sha256()
        for s in self.data.train:
            keys.update(self.data.utterances[s.target].key.encode())
            keys.update(b",".join(self.data.utterances[i].key.encode() for i in s.context) + b";")
        return {**self.options.run_identity(), "source": self.source, "train_samples": keys.hexdigest()[:16]}

    def _batch(self, draws: list[tuple[int, int]], samples: list[Sample], ratio: float) -> Batch:
        sequences = [
            sequence_frames(samples[index], self.data.utterances, self.k, ratio, draw_generator(self.options.seed, draw))
            for draw, index in draws
        ]
        return collate(sequences).to(self.dist.device)

    def evaluate(self, module: TrainingModule) -> float | None:
        """The held-out loss (every target frame scored by both parts), over all processes."""
        samples = self.data.eval
        if not samples:
            return None
        mine = list(enumerate(samples))[self.dist.rank :: self.dist.world_size]
        size = max(1, self.options.batch_size // (self.options.grad_accum * self.dist.world_size))
        sums = [0.0, 0.0, 0.0, 0.0]
        module.eval()
        with torch.no_grad(), autocast_for(self.options, self.dist.device):
            for start in range(0, len(mine), size):
                batch = self._batch([(i, i) for i, _ in mine[start : start + size]], samples, 1.0)
                b, d = module(batch.tokens, batch.mask, batch.targets, batch.decoder)
                sums = [sums[0] + b.item(), sums[1] + d.item(),
                        sums[2] + batch.backbone_count, sums[3] + batch.decoder_count(self.k)]
        module.train()
        b, d, nb, nd = self.dist.sum(sums)
        return b / nb + d / nd

    # -- the run -----------------------------------------------------------------------------------
    def run(self, resume: bool) -> TrainResult:
        o, dist = self.options, self.dist
        torch.manual_seed(o.seed)
        random.seed(o.seed)
        np.random.seed(o.seed)
        tuner = None
        if o.lora:
            tuner = add_lora(self.model, o.lora_targets, o.lora_rank, o.lora_alpha, o.lora_dropout, o.lora_full_weights)
        self.model.train()
        trainable = trainable_parameters(self.model)
        decay = [p for p in trainable.values() if p.ndim >= 2]
        no_decay = [p for p in trainable.values() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=o.betas, foreach=False,
        )
        identity = self._identity()
        start, position = 0, 0
        if resume:
            checkpoint = latest_checkpoint(self.output_dir)
            if checkpoint is None:
                raise ResumeError(f"--resume: no checkpoint in {self.output_dir / 'checkpoints'}")
            state = load_checkpoint(checkpoint, dist, trainable=trainable, optimizer=optimizer, identity=identity)
            start, position = state["step"], state["position"]
            if dist.is_main:
                self.report(f"resuming from {checkpoint} (step {start})")
        module = TrainingModule(self.model, o.gradient_checkpointing).to(dist.device)
        wrapped = module
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(module, device_ids=[dist.device] if dist.device.startswith("cuda") else None)
        metrics = MetricsLog(self.output_dir / METRICS_FILE, start if resume else None, enabled=dist.is_main)
        result = TrainResult(None, start, o.steps)
        if not resume:
            baseline = self.evaluate(module)
            if baseline is not None:
                metrics.write({"step": 0, "eval_loss": baseline})
                result.eval_losses[0] = baseline
        order = SampleOrder(len(self.data.train), o.seed, position)
        progress = _progress(start, o.steps, enabled=dist.is_main and o.progress)
        saved_at = start
        try:
            for step in range(start + 1, o.steps + 1):
                record = self._step(step, order, wrapped, trainable, optimizer)
                result.losses.append(record["loss"])
                last = step == o.steps
                if step % o.eval_every == 0 or last:
                    eval_loss = self.evaluate(module)
                    if eval_loss is not None:
                        record["eval_loss"] = result.eval_losses[step] = eval_loss
                if step % o.log_every == 0 or last or step == start + 1 or "eval_loss" in record:
                    metrics.write(record)
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.3f}")
                if step % o.save_every == 0 or last:
                    save_checkpoint(self.output_dir, step, dist, trainable=trainable, optimizer=optimizer,
                                    position=order.position, identity=identity, keep=o.keep_checkpoints)
                    saved_at = step
        finally:
            progress.close()
            result.saved_at = saved_at
        if tuner is not None:
            merge_lora(tuner)
        self.model.eval()
        if dist.is_main:
            info = {"source": self.source, "steps": o.steps, "options": o.model_dump(mode="json"),
                    "final_loss": result.losses[-1] if result.losses else None,
                    "final_eval_loss": result.eval_losses.get(o.steps)}
            result.final = save_final(self.output_dir, self.model, self.tokenizer, self.codec_loader(), info)
        dist.barrier()
        return result

    def _step(self, step: int, order: SampleOrder, wrapped, trainable, optimizer) -> dict:
        o, dist = self.options, self.dist
        draws = order.take(o.batch_size)
        micro = o.batch_size // o.grad_accum
        batches = [self._batch(draws[i * micro : (i + 1) * micro][dist.rank :: dist.world_size], self.data.train, o.amortization)
                   for i in range(o.grad_accum)]
        count_b, count_d = dist.sum([sum(b.backbone_count for b in batches), sum(b.decoder_count(self.k) for b in batches)])
        sum_b = sum_d = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not dist.enabled
            with (nullcontext() if sync else wrapped.no_sync()):
                with autocast_for(o, dist.device):
                    b, d = wrapped(batch.tokens, batch.mask, batch.targets, batch.decoder)
                    loss = (b / count_b + d / count_d) * dist.world_size
                loss.backward()
            sum_b, sum_d = sum_b + b.item(), sum_d + d.item()
        params = list(trainable.values())
        if o.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        lr = learning_rate(step, o)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total_b, total_d = dist.sum([sum_b, sum_d])
        backbone, decoder = total_b / count_b, total_d / count_d
        return {"step": step, "loss": backbone + decoder, "backbone_loss": backbone, "decoder_loss": decoder,
                "lr": lr, "grad_norm": grad_norm}


def _progress(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="training", unit="step", disable=not enabled, dynamic_ncols=True)
