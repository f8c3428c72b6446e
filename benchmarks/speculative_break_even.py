"""At which acceptance rate ``speculative-codebooks`` pays: one decoder pass over n guesses vs decoder steps.

    python -m benchmarks.speculative_break_even --preset small [--threads 1] [--sizes 1,2,4,8,31]

It loads the tts stage with the optimizer the way ``csmctl say`` does (so the engines are the real
PyTorch ones, with the :class:`~csm_optimizers.speculative_frame.SpeculativeFrame` installed), decodes a
greedy utterance of ``--frames`` frames step by step from a random text prompt (reference codes and each
frame's decoder inputs), and times, keeping the best of ``--repeats`` timings (load on a shared machine
only adds time; steps and passes are timed interleaved so that it hits both alike):

- ``step``: one decoder step (``engines.decoder.step``), the mean over frame 0's K-1 steps;
- ``pass(n)``: one teacher-forced pass at the frame's start over n guesses
  (``SpeculativeFrame.logits_pass``: n+2 inputs, logits of codebooks 1..n+1; n = K-1 feeds K-2 guesses).

A pass whose first A guesses are accepted decides A+1 codebooks (the code after the accepted prefix
comes from the same logits), which step by step costs A+1 steps. It pays when A+1 > pass/step, so the
break-even accepted prefix is ``a* = pass/step - 1``; as an acceptance rate (accepted / drafted) that is
``a*/n``; and for guesses accepted independently with probability alpha (the prefix is then
alpha + ... + alpha^n on average) it is the alpha that solves that sum = a*.

Then the whole utterance's depth decoding, per frame (decisions and drafting included; rounds without
limit): step by step (the core's ``decode_frame``), with guesses that are always right (the reference
codes: acceptance 1) or always wrong (acceptance 0), and with the optimizer's own drafter, which accepts
almost nothing on these random weights. Timings do not depend on weight values, acceptance does: the
oracle rows bound what a well-drafted model gains or loses.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch


class SequenceDrafter:
    """Guesses frame i's codes as ``frames[i]`` [1,K] (frames decoded in order; reset starts again at 0)."""

    name = "sequence"

    def __init__(self, frames: list[torch.Tensor]) -> None:
        self.frames, self.index = frames, 0

    def draft(self, prefix, start, count):
        return self.frames[self.index][:, start : start + count]

    def observe(self, frame) -> None:
        self.index += 1

    def reset(self) -> None:
        self.index = 0


def break_even_alpha(a_star: float, n: int) -> float | None:
    """alpha in [0,1] with alpha + ... + alpha^n = a_star (0 when a_star <= 0, None when a_star > n)."""
    if a_star <= 0:
        return 0.0
    if a_star > n:
        return None
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if sum(mid**i for i in range(1, n + 1)) < a_star else (low, mid)
    return (low + high) / 2


def _timings_ms(fn, number: int, repeats: int) -> list[float]:
    """Milliseconds per call of ``fn``, averaged over ``number`` calls, ``repeats`` times."""
    values = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        values.append((time.perf_counter() - started) * 1000 / number)
    return values


def _reference(engines, embedder, params, frames: int):
    """A greedy utterance of ``frames`` frames decoded step by step from a random 16-token text prompt:
    the decoder's inputs of each frame, ``[(hidden [1,D], c0_logits [1,V])]``, and its codes ``[[1,K]]``."""
    from csm_core.generation.frames import decode_frame

    k = embedder.num_codebooks
    gen = torch.Generator().manual_seed(0)
    tokens = torch.zeros(1, 16, k + 1, dtype=torch.long)
    tokens[..., -1] = torch.randint(0, 256, (1, 16), generator=gen)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[..., -1] = True
    inputs, codes = [], []
    with torch.inference_mode():
        engines.backbone.reset()
        hidden, c0 = engines.backbone.prefill(embedder.embed_frames(tokens, mask), torch.arange(16)[None])
        for index in range(frames):
            frame = decode_frame(engines, embedder, hidden, c0, params)
            inputs.append((hidden, c0))
            codes.append(frame)
            hidden, c0 = engines.backbone.step(embedder.embed_codes(frame), torch.tensor([[16 + index]]))
    return inputs, codes


def measure(preset: str, sizes: list[int], repeats: int, number: int, frames: int) -> dict:
    from csm_core.config import Settings
    from csm_core.generation.frames import decode_frame
    from csm_core.generation.sampling import SamplingParams
    from csm_core.pipeline import Pipeline
    from csm_core.plugins import Plugins

    settings = Settings(models={"preset": preset}, device="cpu", optimizers=["speculative-codebooks"])
    with Pipeline(settings, Plugins.from_environment()) as pipeline:
        speaker = pipeline.stage("tts")
        engines, embedder, speculative = speaker.engines, speaker.embedder, speaker.engines.frame_decoder
        k = embedder.num_codebooks
        greedy = SamplingParams(temperature=0.0, code_limit=speaker.codec.codebook_size)
        inputs, codes = _reference(engines, embedder, greedy, frames)
        hidden, c0 = inputs[0]
        x = [torch.cat((hidden[:, None], embedder.embed_audio(0, codes[0][:, 0])), dim=1)]
        x += [embedder.embed_audio(i, codes[0][:, i]) for i in range(1, k - 1)]  # codebook i at position i+1

        def steps():  # the K-1 decoder steps of frame 0, as decode_frame makes them
            engines.decoder.reset()
            for i, each in enumerate(x):
                engines.decoder.step(each, torch.arange(2)[None] if i == 0 else torch.tensor([[i + 1]]))

        def one_pass(n: int):  # the pass over n guesses at the frame's start
            joined = torch.cat(x[: min(n, k - 2) + 1], dim=1)

            @torch.inference_mode()
            def run():
                engines.decoder.reset()
                speculative.logits_pass(joined, 0, min(n + 1, k - 1))
            return run

        step_values, rows = [], []
        for n in sizes:
            run = one_pass(n)
            run()
            passes = []
            for _ in range(repeats):  # interleaved: a frame of steps, then the passes
                step_values += _timings_ms(steps, max(1, number // 8), 1)
                passes += _timings_ms(run, number, 1)
            rows.append({"n": n, "pass_ms": min(passes)})
        step_ms = min(step_values) / (k - 1)
        for row in rows:
            ratio = row["pass_ms"] / step_ms
            row.update(step_ms=step_ms, ratio=ratio, a_star=ratio - 1, rate=max(ratio - 1, 0) / row["n"],
                       alpha=break_even_alpha(ratio - 1, row["n"]))

        def utterance(decode):
            def run():
                for hidden, c0 in inputs:
                    decode(hidden, c0)
            return run

        whole = {"step by step": (min(_timings_ms(utterance(
            lambda h, c: decode_frame(engines, embedder, h, c, greedy)), 1, repeats)) / frames, None, k - 1.0)}
        wrong = [(frame + 1) % greedy.code_limit for frame in codes]
        drafters = {"always right (acceptance 1)": SequenceDrafter(codes),
                    "always wrong (acceptance 0)": SequenceDrafter(wrong),
                    f"{speculative.drafter.name} (random weights)": speculative.drafter}
        for n in sorted({1, 4, max(sizes)} & set(sizes)) or sizes[:1]:
            for label, drafter in drafters.items():
                speculative.drafter, speculative.max_draft, speculative.rounds = drafter, min(n, k - 1), None
                before, times = speculative.counters, []
                for _ in range(repeats):
                    drafter.reset()
                    times += _timings_ms(utterance(lambda h, c: speculative.decode(h, c, greedy)), 1, 1)
                run = speculative.counters - before
                whole[f"guesses {label}, max_draft {n}"] = (min(times) / frames, run.acceptance_rate,
                                                            run.decoder_calls_per_frame)
        return {"preset": preset, "threads": torch.get_num_threads(), "codebooks": k, "frames": frames, "repeats": repeats,
                "rows": rows, "whole": whole}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speculative_break_even",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--sizes", default="1,2,3,4,6,8,12,16,24,31", help="guesses per pass to time")
    parser.add_argument("--repeats", type=int, default=7, help="timings of each figure; the best is kept")
    parser.add_argument("--number", type=int, default=40, help="passes per timing")
    parser.add_argument("--frames", type=int, default=12, help="frames of the utterance the whole-frame rows decode")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        print(f"error: --sizes={args.sizes!r}: give comma-separated integers, e.g. 1,2,4,8", file=sys.stderr)
        return 2
    if not sizes or sizes[0] < 1:
        print(f"error: --sizes={args.sizes!r}: every size must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    report = measure(args.preset, sizes, args.repeats, args.number, args.frames)
    k = report["codebooks"]
    sizes = [min(n, k - 1) for n in sizes]
    print(f"{report['preset']} preset, CPU, {report['threads']} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"one decoder step {report['rows'][0]['step_ms']:.3f} ms (best of {report['repeats']} timings)")
    print("| guesses n | pass (ms) | pass / step | break-even accepted per pass | break-even acceptance rate "
          "| break-even per-guess alpha |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in report["rows"]:
        alpha = "never pays" if row["alpha"] is None else f"{row['alpha']:.2f}"
        print(f"| {row['n']} | {row['pass_ms']:.3f} | {row['ratio']:.2f} | {max(row['a_star'], 0):.2f} "
              f"| {min(row['rate'], 1):.2f} | {alpha} |")
    print()
    print(f"| whole frames ({report['frames']}-frame utterance, rounds no limit) | ms per frame | acceptance "
          "| decoder calls per frame |")
    print("| --- | --- | --- | --- |")
    for label, (ms, rate, calls) in report["whole"].items():
        print(f"| {label} | {ms:.2f} | {'-' if rate is None else f'{rate:.3f}'} | {calls:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
