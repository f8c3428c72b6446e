"""Where a frame's time goes: backbone step, depth decoding, Mimi decoding, and everything else.

    python -m benchmarks.frame_profile --preset csm-1b --device cuda -O cuda-graphs [-O selective-precision]

It loads the TTS stage the way ``csmctl say`` does (the config, ``CSM_*`` and the flags), then times,
each with the device synchronized before and after so a GPU's queued work is counted:

- ``frame loop``: :func:`~csm_core.generation.frames.generate_frames` for ``--frames`` greedy frames
  (codes only: backbone steps, depth decoding, the loop's own bookkeeping);
- ``backbone step``: one backbone step (``engines.backbone.step``), repeated;
- ``depth decoding``: one frame's codebooks 1..K-1 (``engines.frame_decoder`` where the engines offer
  one, else the core's step-by-step ``decode_frame``), repeated;
- ``mimi decode``: one frame through the codec's streaming ``decode_step``, repeated;
- ``tts stage``: the whole stage (``speak``: frames, Mimi, copies to the host), per frame.

Each figure is the median milliseconds per frame over ``--repeats`` runs; ``other`` is the frame loop
minus backbone step and depth decoding. ``pipelining bound`` is the most ``pipelined-decoding`` can gain,
``1 + mimi decode / frame loop`` (frame t's decoding hidden under frame t+1's generation). The JSON goes to ``--out`` when given. Random weights: the
figures do not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def _timer(device: str):
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    def measure(fn, count: int) -> float:
        """Milliseconds per call of ``fn`` over ``count`` calls, synchronized at both ends."""
        sync()
        started = time.perf_counter()
        for _ in range(count):
            fn()
        sync()
        return (time.perf_counter() - started) * 1000 / count

    return measure


def profile(settings, frames: int, repeats: int) -> dict:
    from csm_core.generation import build_prompt
    from csm_core.generation.frames import decode_frame, generate_frames
    from csm_core.pipeline import Pipeline
    from csm_core.plugins import Plugins
    from csm_core.stages import SpeechParams, SpeechRequest

    with Pipeline(settings, Plugins.from_environment()) as pipeline:
        speaker = pipeline.stage("tts")
        engines, embedder, codec = speaker.engines, speaker.embedder, speaker.codec
        device = str(embedder.device)
        measure = _timer(device)
        sampling = speaker._sampling(SpeechParams(temperature=0.0, top_k=1, top_p=1.0, max_frames=frames, seed=0))
        prompt = build_prompt([], 0, "Where does the time of a frame go?", speaker.tokenizer,
                              num_codebooks=embedder.num_codebooks, max_frames=frames,
                              max_positions=engines.backbone.max_positions)

        def frame_loop():
            codes = list(generate_frames(engines, embedder, prompt, max_frames=frames, sampling=sampling,
                                         silence_guard=None))
            assert len(codes) == frames
            return codes

        codes = torch.stack(frame_loop(), dim=2)  # warm-up (captures graphs), and the codes for Mimi
        with torch.inference_mode():
            hidden, c0_logits = engines.backbone.prefill(
                embedder.embed_frames(prompt.tokens[None].to(device), prompt.mask[None].to(device)),
                torch.arange(len(prompt), device=device)[None])
        embed = embedder.embed_codes(codes[:, :, 0])
        position = torch.full((1, 1), len(prompt), device=device, dtype=torch.long)
        fused = engines.frame_decoder if getattr(engines, "frame_decoder", None) is not None else None

        def depth():
            if fused is not None and fused.supports(sampling):
                return fused.decode(hidden, c0_logits, sampling)
            return decode_frame(engines, embedder, hidden, c0_logits, sampling, None)

        def mimi():
            state = codec.init_state(1)
            for index in range(frames):
                _, state = codec.decode_step(codes[:, :, index:index + 1], state)

        request = SpeechRequest(text="Where does the time of a frame go?", speaker=0, context=(),
                                params=SpeechParams(temperature=0.0, top_k=1, top_p=1.0, max_frames=frames, seed=0))

        def stage():
            chunks = list(speaker.speak(request))
            assert chunks

        rows = {
            "frame loop": [measure(frame_loop, 1) / frames for _ in range(repeats)],
            "backbone step": [measure(lambda: engines.backbone.step(embed, position), frames) for _ in range(repeats)],
            "depth decoding": [measure(depth, frames) for _ in range(repeats)],
            "mimi decode": [measure(mimi, 1) / frames for _ in range(repeats)],
            "tts stage": [measure(stage, 1) / frames for _ in range(repeats)],
        }
        result = {name: statistics.median(values) for name, values in rows.items()}
        result["other"] = result["frame loop"] - result["backbone step"] - result["depth decoding"]
        bound = 1 + result["mimi decode"] / result["frame loop"]
        return {"pipelining_bound": bound, "device": device, "preset": settings.models.preset, "optimizers": list(settings.optimizers),
                "precision": {part: settings.precision_of(part) for part in ("backbone", "decoder")},
                "frames": frames, "repeats": repeats, "depth_decoding": "one call per frame" if fused else "per step",
                "ms_per_frame": result}


def main(argv: list[str] | None = None) -> int:
    from csm_core.config import load_settings
    from csm_core.errors import CsmError

    parser = argparse.ArgumentParser(prog="python -m benchmarks.frame_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("-O", "--optimizer", action="append", default=[], help="optimizer to enable (repeat)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(None, {"models.preset": args.preset, "device": args.device,
                                        "optimizers": args.optimizer})
        report = profile(settings, args.frames, args.repeats)
    except CsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['preset']} on {report['device']}, optimizers {report['optimizers'] or ['none']}, "
          f"precision {report['precision']}, depth decoding {report['depth_decoding']}:")
    for name, ms in report["ms_per_frame"].items():
        print(f"  {name:15s} {ms:8.2f} ms per frame")
    print(f"  pipelining bound {report['pipelining_bound']:.2f}x (1 + mimi decode / frame loop)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
