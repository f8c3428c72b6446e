"""The trainer in-process on the ``tiny`` preset and synthetic codes: real AdamW steps, real checkpoints.

Resuming from a checkpoint must give the very losses the uninterrupted run had after it (same data
order, same optimizer state, same random states); LoRA merged into the weights must compute what the
adapters computed.
"""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from csm_core.errors import CsmError  # noqa: E402
from csm_model.mimi import random_mimi  # noqa: E402
from csm_model.presets import build_preset  # noqa: E402
from csm_train.batch import collate  # noqa: E402
from csm_train.checkpoint import ResumeError, latest_checkpoint  # noqa: E402
from csm_train.distributed import Distributed  # noqa: E402
from csm_train.lora import add_lora, merge_lora  # noqa: E402
from csm_train.loss import loss_sums  # noqa: E402
from csm_train.metrics import read_metrics  # noqa: E402
from csm_train.options import TrainOptions  # noqa: E402
from csm_train.samples import sequence_frames  # noqa: E402
from csm_train.trainer import Trainer, learning_rate  # noqa: E402

from synthetic import synthetic_data  # noqa: E402


def trainer(output_dir, **options) -> Trainer:
    model, tokenizer = build_preset("tiny")
    data = synthetic_data(model.args.num_codebooks, model.args.max_seq_len)
    settings = dict(steps=6, batch_size=2, lr=3e-3, eval_every=3, save_every=3, log_every=1, keep_checkpoints=5,
                    progress=False)
    settings.update(options)
    return Trainer(
        model=model, tokenizer=tokenizer, codec_loader=lambda: random_mimi("tiny"), data=data,
        options=TrainOptions(**settings), output_dir=output_dir, dist=Distributed(), source="preset:tiny",
        report=lambda message: None,
    )


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_continues_the_same_run(tmp_path, lora):
    whole = tmp_path / "whole"
    result = trainer(whole, lora=lora, grad_accum=2).run(resume=False)
    assert result.final is not None and (result.final / "model.safetensors").is_file()
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    # The run as if killed right after its step-3 checkpoint: later checkpoints, metrics and result gone.
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000006")
    shutil.rmtree(cut / "final")
    resumed = trainer(cut, lora=lora, grad_accum=2).run(resume=True)
    assert resumed.start_step == 3
    assert resumed.losses == pytest.approx(result.losses[3:], abs=1e-6)
    whole_metrics, cut_metrics = read_metrics(whole / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert [m["step"] for m in cut_metrics] == [0, 1, 2, 3, 4, 5, 6]
    for a, b in zip(whole_metrics, cut_metrics):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["step"], key)
    assert result.losses[-1] < result.losses[0]


def test_resume_refuses_other_settings(tmp_path):
    trainer(tmp_path, steps=3).run(resume=False)
    with pytest.raises(ResumeError, match=r"lr: was 0\.003, now 0\.01"):
        trainer(tmp_path, steps=3, lr=1e-2).run(resume=True)
    with pytest.raises(ResumeError, match="lora"):
        trainer(tmp_path, steps=3, lora=False).run(resume=True)


def test_half_written_checkpoint_is_not_resumed(tmp_path):
    trainer(tmp_path, steps=3).run(resume=False)
    partial = tmp_path / "checkpoints" / ".tmp-step-00000009"  # what a kill during a save leaves
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert state["step"] == 3 and state["position"] == 6


def test_merged_lora_computes_what_the_adapters_computed():
    model, _ = build_preset("tiny")
    base = {name: t.clone() for name, t in model.state_dict().items()}
    tuner = add_lora(model, ["q_proj", "v_proj", "down_proj"], rank=4, alpha=8, full_weights=["audio_head"])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert "audio_head" in trainable and "codebook0_head.weight" not in trainable
    assert all("lora_" in n for n in trainable if n != "audio_head")
    with torch.no_grad():  # adapters that change the output (lora_B starts at zero)
        gen = torch.Generator().manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    data = synthetic_data(model.args.num_codebooks, model.args.max_seq_len)
    gen = torch.Generator().manual_seed(1)
    batch = collate([sequence_frames(s, data.utterances, model.args.num_codebooks, 1.0, gen) for s in data.train])
    with torch.no_grad():
        with_adapters = loss_sums(model, batch).mean().item()
        merged = merge_lora(tuner)
        assert set(merged.state_dict()) == set(base)
        assert not torch.equal(merged.state_dict()["backbone.layers.0.attn.q_proj.weight"], base["backbone.layers.0.attn.q_proj.weight"])
        assert torch.equal(merged.state_dict()["backbone.layers.0.attn.k_proj.weight"], base["backbone.layers.0.attn.k_proj.weight"])
        assert abs(loss_sums(merged, batch).mean().item() - with_adapters) < 1e-5


def test_unknown_full_weight_is_an_error():
    model, _ = build_preset("tiny")
    with pytest.raises(CsmError, match="'heads' names no CSM parameter"):
        add_lora(model, ["q_proj"], rank=2, alpha=2, full_weights=["heads"])


def test_learning_rate_schedule():
    options = TrainOptions(steps=10, warmup_steps=2, lr=1.0, schedule="cosine")
    rates = [learning_rate(s, options) for s in range(1, 11)]
    assert rates[:2] == [0.5, 1.0]
    assert all(a > b for a, b in zip(rates[1:], rates[2:])) and rates[-1] > 0
    linear = TrainOptions(steps=10, warmup_steps=0, lr=1.0, schedule="linear")
    assert [round(learning_rate(s, linear), 6) for s in (1, 10)] == [round(1 - 1 / 11, 6), round(1 - 10 / 11, 6)]
    assert learning_rate(7, TrainOptions(steps=10, warmup_steps=2, schedule="constant", lr=0.1)) == 0.1


def test_benchmark_runs_one_step_per_ratio():
    from csm_train.bench import measure

    threads = torch.get_num_threads()
    for ratio in (1 / 16, 1.0):
        result = measure("tiny", ratio, steps=1, batch=1, seconds=1.0, lora=True, device="cpu")
        assert (result["amortization"], result["frames_per_sample"], result["threads"]) == (ratio, 13, 1)  # round(12.5) frames + the end frame
        assert result["steps_per_s"] > 0 and result["peak_memory_mib"] >= 0
        assert torch.get_num_threads() == threads  # measure() leaves the process's setting as it was
