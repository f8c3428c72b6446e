"""``[options.train]``: every setting of ``csmctl train`` (flags override the config file's values).

Settings that shape the result (everything but the bookkeeping ones in :data:`BOOKKEEPING`) are
recorded in each checkpoint; ``--resume`` refuses to continue a run under different ones, since the
loss curve would no longer be that run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TrainOptions", "LORA_TARGETS", "LORA_FULL_WEIGHTS", "BOOKKEEPING"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_FULL_WEIGHTS = ("codebook0_head", "audio_head")
BOOKKEEPING = ("eval_every", "save_every", "keep_checkpoints", "log_every", "strict", "cache_dir", "shard_size", "progress")


class TrainOptions(BaseModel):
    """How to fine-tune. ``batch_size`` is the global batch: samples per optimizer step, summed over
    gradient-accumulation micro-batches and data-parallel processes."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="samples per optimizer step (all processes, all micro-batches)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (gradient accumulation)")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up; default 5% of steps")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up, to 0")
    max_grad_norm: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: no clipping)")
    amortization: float = Field(
        1 / 16, gt=0, le=1, description="fraction of target frames the depth decoder is trained on (1.0: all)"
    )
    lora: bool = Field(True, description="train LoRA adapters (merged into the result) instead of every weight")
    lora_rank: int = Field(32, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1)
    lora_full_weights: list[str] = Field(
        default_factory=lambda: list(LORA_FULL_WEIGHTS),
        description="weights trained in full beside the LoRA adapters (names or name prefixes of Csm parameters)",
    )
    gradient_checkpointing: bool = Field(False, description="recompute layer activations in the backward pass")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA that has it")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="conversations held out for the eval loss")
    eval_every: int = Field(100, ge=1, description="steps between eval losses (and at the end)")
    save_every: int = Field(500, ge=1, description="steps between checkpoints (and at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    log_every: int = Field(10, ge=1, description="steps between lines of metrics.jsonl (also the first and last)")
    seed: int = Field(0, ge=0)
    strict: bool = Field(False, description="stop at the first bad data row instead of skipping it")
    cache_dir: Path | None = Field(None, description="pre-tokenized clips; default OUTPUT_DIR/pretokenized")
    shard_size: int = Field(256, ge=1, description="clips per safetensors shard")
    progress: bool = Field(True, description="show progress bars")

    @model_validator(mode="after")
    def _targets_known(self) -> TrainOptions:
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"lora_targets: unknown module {unknown[0]!r}; choose from {', '.join(LORA_TARGETS)}")
        return self

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else round(0.05 * self.steps)

    def run_identity(self) -> dict:
        """The settings a resumed run must share with the checkpoint it resumes."""
        return self.model_dump(mode="json", exclude=set(BOOKKEEPING))
