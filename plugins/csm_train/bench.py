"""A small benchmark of training steps with and without compute amortization.

    python -m csm_train.bench --preset small --amortization 0.0625 1.0 --steps 5

For each amortization ratio, a fresh process builds the preset (random weights), makes ``batch``
synthetic utterances of ``seconds`` of audio each (random codes, a short text), and times ``steps``
optimizer steps (forward, backward, AdamW) after one untimed warm-up step, on ``--threads``
(default 1) intra-op threads. Peak memory is the
process's peak resident set on the CPU (``ru_maxrss``, minus the resident set before the first step)
or ``torch.cuda.max_memory_allocated`` on CUDA. One JSON line per ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def measure(preset: str, ratio: float, steps: int, batch: int, seconds: float, lora: bool, device: str,
            threads: int = 1) -> dict:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(preset, ratio, steps, batch, seconds, lora, device)
    finally:
        torch.set_num_threads(previous)


def _measure(preset: str, ratio: float, steps: int, batch: int, seconds: float, lora: bool, device: str) -> dict:
    import torch

    from csm_model.presets import build_preset

    from .batch import collate
    from .lora import add_lora, trainable_parameters
    from .loss import loss_sums
    from .options import LORA_FULL_WEIGHTS, LORA_TARGETS
    from .samples import Utterance, build_samples, sequence_frames

    torch.manual_seed(0)
    model, tokenizer = build_preset(preset, device=device)
    if lora:
        add_lora(model, LORA_TARGETS, 32, 32.0, full_weights=LORA_FULL_WEIGHTS)
    model.train()
    k, frames = model.args.num_codebooks, round(seconds * 12.5)
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor(tokenizer.encode("[0]A sentence of about the length people say in ten seconds or so."))
    utterances = [Utterance(f"u{i}", f"u{i}", None, ids, torch.randint(0, 2048, (k, frames), generator=gen)) for i in range(batch)]
    samples = build_samples(utterances, model.args.max_seq_len)
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-4, foreach=False)

    def step(seed: int) -> None:
        draw = torch.Generator().manual_seed(seed)
        b = collate([sequence_frames(s, utterances, k, ratio, draw) for s in samples]).to(device)
        loss_sums(model, b).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_bytes()
    started = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    return {
        "preset": preset, "amortization": ratio, "lora": lora, "device": device, "batch": batch,
        "frames_per_sample": frames + 1, "steps": steps, "steps_per_s": steps / elapsed,
        "peak_memory_mib": round(peak / 2**20, 1), "threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--amortization", type=float, nargs="+", default=[1 / 16, 1.0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--full", action="store_true", help="train every weight (default: LoRA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadiest on a shared CPU)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # run one ratio in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.preset, args.amortization[0], args.steps, args.batch, args.seconds,
                                 not args.full, args.device, args.threads)))
        return
    for ratio in args.amortization:
        command = [sys.executable, "-m", "csm_train.bench", "--one", "--preset", args.preset, "--amortization",
                   str(ratio), "--steps", str(args.steps), "--batch", str(args.batch), "--seconds", str(args.seconds),
                   "--device", args.device, "--threads", str(args.threads)] + (["--full"] if args.full else [])
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
