"""``csmctl eval``: run a prompt set through one or two pipelines and write eval.json, eval.md and eval.png.

Each prompt is spoken by the pipeline's ``tts`` stage (``Pipeline.speak``; a prompt's ``voice`` clip is
encoded by the ``tokenizer`` stage and given as context), then the generated speech goes through the
pipeline's own ``transcriber`` (WER/CER) and ``sentiment`` (emotion coherence) stages. See
``docs/eval.md`` for the metrics and their limits.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from csm_core.errors import CsmError

from .evaluation import (
    PROSODY_FIELDS, Prompt, arousal_ordering, corpus_error_rates, error_rates, metric_group, prosody_deltas,
    prosody_summary, speaker_similarity, speaker_similarity_unavailable,
)

__all__ = ["RunSpec", "compare_spec", "evaluate", "comparison", "write_reports"]

EVAL_STAGES = ("tts", "tokenizer", "transcriber", "sentiment")


@dataclass(frozen=True)
class RunSpec:
    """One pipeline to evaluate: a label and the settings overrides that make it."""

    label: str
    overrides: dict = field(default_factory=dict)


def compare_spec(value: str, base: RunSpec) -> RunSpec:
    """The run ``--compare VALUE`` names, relative to ``base``:

    - ``preset:NAME``: random weights of that preset (instead of the base's weights);
    - ``optimizers:A,B``: the base's model with these optimizers (``optimizers:none``: with none);
    - anything else: a CSM checkpoint directory (as ``-w``).
    """
    value = value.strip()
    if not value:
        raise CsmError("--compare is empty: give a checkpoint folder, preset:NAME or optimizers:NAME[,NAME]")
    if value.startswith("preset:"):
        name = value.split(":", 1)[1].strip()
        if not name:
            raise CsmError("--compare preset: needs a preset name, e.g. preset:tiny")
        return RunSpec(f"preset {name}", {**base.overrides, "models.preset": name, "models.model_path": None})
    if value.startswith("optimizers:"):
        names = [n.strip() for n in value.split(":", 1)[1].split(",") if n.strip()]
        if not names:
            raise CsmError("--compare optimizers: needs optimizer names (or none), e.g. optimizers:weight-quantization")
        names = [] if names == ["none"] else names
        return RunSpec(f"optimizers {'+'.join(names) or 'none'}", {**base.overrides, "optimizers": names})
    path = Path(value).expanduser()
    if not path.is_dir():
        raise CsmError(f"--compare {value!r} is not a checkpoint folder, preset:NAME or optimizers:NAME[,NAME]")
    return RunSpec(f"checkpoint {path.name}", {**base.overrides, "models.model_path": path, "models.preset": None})


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _requested_arousal(emotion: str) -> float | None:
    from csm_listen import EMOTION_PROTOTYPES

    point = EMOTION_PROTOTYPES.get(emotion)
    return None if point is None else float(point[0])


def _evaluate_prompt(pipeline, prompt: Prompt, similarity_off: str | None) -> dict:
    from csm_core.audio import read_audio
    from csm_core.stages import Segment
    from csm_core.voice_profile import tokenizer_encoder

    settings = pipeline.settings
    voice_audio = None
    context: tuple = ()
    if prompt.voice is not None:
        voice_audio = read_audio(prompt.voice, what=f"prompt line {prompt.line}: voice")
        codes = tokenizer_encoder(pipeline)(voice_audio)
        context = (Segment(settings.speaker, prompt.voice_text, codes),)
    turn = pipeline.speak(prompt.text, emotion=prompt.emotion, context=context)
    audio = turn.audio
    metrics = turn.metrics
    has_audio = audio is not None and audio.samples.size > 0
    no_audio = "no audio was generated"

    speed = metric_group({
        "real_time_factor": _number(metrics.real_time_factor),
        "time_to_first_audio_s": _number(metrics.time_to_first_audio_s),
        "frames_per_second": _number(metrics.frames_per_second),
        "generation_seconds": _number(metrics.generation_seconds),
        "audio_seconds": _number(metrics.audio_seconds),
    }, default=no_audio)

    transcript = pipeline.stage("transcriber").transcribe(audio) if has_audio else ""
    rates = error_rates(prompt.text, transcript)
    intelligibility = metric_group({"wer": rates["wer"], "cer": rates["cer"]})

    generated = prosody_summary(audio.samples, audio.sample_rate) if has_audio else dict.fromkeys(PROSODY_FIELDS)
    reference = delta = None
    prosody_reasons = {name: ("no voiced frame in the generated speech" if name.startswith("f0") else
                              "no speech in the generated audio") for name in PROSODY_FIELDS}
    if prompt.reference is not None:
        clip = read_audio(prompt.reference, what=f"prompt line {prompt.line}: reference")
        reference = prosody_summary(clip.samples, clip.sample_rate)
        delta = prosody_deltas(generated, reference)
    prosody = {
        "generated": metric_group(generated, prosody_reasons),
        "reference": None if reference is None else metric_group(reference, default="not measurable in the reference clip"),
        "delta": None if delta is None else metric_group(delta, default="missing in the generated speech or the reference"),
        "skipped": {} if reference is not None else {"reference": "the prompt has no 'reference' clip", "delta": "the prompt has no 'reference' clip"},
    }

    similarity, reason = None, None
    if prompt.voice is None:
        reason = "the prompt has no 'voice' clip"
    elif similarity_off is not None:
        reason = similarity_off
    elif not has_audio:
        reason = no_audio
    else:
        try:
            similarity = speaker_similarity(audio.samples, audio.sample_rate, voice_audio.samples, voice_audio.sample_rate)
        except Exception as exc:  # noqa: BLE001 - the metric is reported as skipped with why
            reason = f"speaker embedding failed: {exc}"
    voice = metric_group({"speaker_similarity": similarity}, {"speaker_similarity": reason or ""})

    emotion_values = {"requested": prompt.emotion, "requested_arousal": None, "heard": None, "heard_arousal": None}
    emotion_reason = "the prompt asks for no emotion"
    if prompt.emotion is not None:
        emotion_values["requested_arousal"] = _requested_arousal(prompt.emotion)
        emotion_reason = no_audio if not has_audio else f"{prompt.emotion!r} has no arousal prototype"
        if has_audio:
            heard = pipeline.stage("sentiment").analyze(audio, turn.reply_codes)
            emotion_values["heard"] = getattr(heard, "label", None)
            emotion_values["heard_arousal"] = _number(getattr(heard, "arousal", None))
    emotion = metric_group(emotion_values, default=emotion_reason)

    limit = int(settings.generation.max_new_frames)
    length = metric_group({
        "frames": int(metrics.frames), "max_frames": limit, "ended_before_limit": bool(metrics.frames < limit),
    })
    return {
        "line": prompt.line, "text": prompt.text, "prompt": prompt.to_dict(), "transcript": transcript,
        "speed": speed, "intelligibility": intelligibility, "voice": voice, "prosody": prosody,
        "emotion": emotion, "length": length, "events": list(metrics.events),
    }


def _mean(values: Sequence[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return float(np.mean(numbers)) if numbers else None


def _overall(prompts: Sequence[Prompt], results: Sequence[dict]) -> dict:
    speed = metric_group({name: _mean([r["speed"][name] for r in results])
                          for name in ("real_time_factor", "time_to_first_audio_s", "frames_per_second")},
                         default="no prompt produced audio")
    rates = corpus_error_rates([p.text for p in prompts], [r["transcript"] for r in results])
    intelligibility = metric_group({"wer": rates["wer"], "cer": rates["cer"]})
    similarities = [r["voice"]["speaker_similarity"] for r in results]
    reasons = sorted({reason for r in results for reason in r["voice"]["skipped"].values()})
    voice = metric_group({"speaker_similarity": _mean(similarities)},
                         {"speaker_similarity": "; ".join(reasons) or "no prompt could be scored"})
    deltas = [r["prosody"]["delta"] for r in results if r["prosody"]["delta"] is not None]
    prosody = metric_group(
        {f"mean_abs_delta_{name}": _mean([None if d[name] is None else abs(d[name]) for d in deltas]) for name in PROSODY_FIELDS},
        default="no prompt has a 'reference' clip" if not deltas else "missing in every generated clip or reference",
    )
    asked = [r["emotion"] for r in results if r["emotion"]["requested_arousal"] is not None and r["emotion"]["heard_arousal"] is not None]
    ordering = arousal_ordering([e["requested_arousal"] for e in asked], [e["heard_arousal"] for e in asked])
    matches = [float(e["heard"] == e["requested"]) for e in asked]
    emotion = metric_group({
        "arousal_order_agreement": ordering["agreement"], "arousal_pairs": ordering["pairs"],
        "label_match_rate": _mean(matches),
    }, {
        "arousal_order_agreement": "needs prompts asking for emotions of different arousal (e.g. calm and excited)",
        "label_match_rate": "no prompt asks for an emotion",
    })
    frames = [r["length"]["frames"] for r in results]
    length = metric_group({
        "mean_frames": _mean(frames), "total_frames": int(sum(frames)),
        "ended_before_limit_rate": _mean([float(r["length"]["ended_before_limit"]) for r in results]),
    })
    return {"speed": speed, "intelligibility": intelligibility, "voice": voice, "prosody": prosody,
            "emotion": emotion, "length": length}


def evaluate(spec: RunSpec, prompts: Sequence[Prompt], config: Path | None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run ``prompts`` through the pipeline ``spec`` makes; the run's section of eval.json."""
    from csm_core.config import load_settings
    from csm_core.pipeline import Pipeline

    settings = load_settings(config, spec.overrides)
    similarity_off = speaker_similarity_unavailable() if any(p.voice for p in prompts) else None
    results = []
    with Pipeline(settings) as pipeline:
        startup = pipeline.preload(EVAL_STAGES)
        for index, prompt in enumerate(prompts):
            if progress is not None:
                progress(spec.label, index, len(prompts))
            results.append(_evaluate_prompt(pipeline, prompt, similarity_off))
        if progress is not None:
            progress(spec.label, len(prompts), len(prompts))
        final = pipeline.settings
    return {
        "label": spec.label,
        "settings": {
            "preset": final.models.preset,
            "model_path": None if final.models.model_path is None else str(final.models.model_path),
            "backend": final.backend_for("tts"), "optimizers": list(final.optimizers),
            "max_new_frames": final.generation.max_new_frames, "seed": final.generation.seed,
            "stages": {name: getattr(final.stages, name) for name in EVAL_STAGES},
        },
        "startup_seconds": startup,
        "prompts": results,
        "overall": _overall(prompts, results),
    }


GROUPS = ("speed", "intelligibility", "voice", "prosody", "emotion", "length")


def _flat(overall: dict) -> dict[str, Any]:
    return {f"{group}.{name}": value for group in GROUPS for name, value in overall[group].items() if name != "skipped"}


def comparison(a: dict, b: dict) -> list[dict]:
    """Every overall metric of run ``a`` and run ``b`` side by side, with ``delta`` = b - a where both are numbers."""
    fa, fb = _flat(a["overall"]), _flat(b["overall"])
    rows = []
    for name in fa:
        x, y = fa[name], fb.get(name)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        rows.append({"metric": name, "a": x, "b": y, "delta": (y - x) if numeric else None})
    return rows


# -- reports ------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def _markdown(document: dict) -> str:
    out = [f"# csmctl eval: {document['prompts_file']}", ""]
    for run in document["runs"]:
        s = run["settings"]
        out += [f"## {run['label']}", "",
                f"model: {s['model_path'] or 'preset ' + str(s['preset'])}; backend {s['backend']}; optimizers "
                f"{', '.join(s['optimizers']) or 'none'}; at most {s['max_new_frames']} frames; seed {s['seed']}", "",
                "| line | text | transcript | WER | CER | RTF | TTFA s | frames/s | frames | ended | F0 Hz | ΔF0 Hz | Δrate | similarity | emotion asked → heard |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["prompts"]:
            delta = r["prosody"]["delta"] or {}
            e = r["emotion"]
            emotion = f"{e['requested']} → {e['heard']}" if e["requested"] else "–"
            out.append("| " + " | ".join([
                str(r["line"]), _fmt(r["text"][:40]), _fmt(r["transcript"][:40] or "(none)"),
                _fmt(r["intelligibility"]["wer"]), _fmt(r["intelligibility"]["cer"]),
                _fmt(r["speed"]["real_time_factor"]), _fmt(r["speed"]["time_to_first_audio_s"]),
                _fmt(r["speed"]["frames_per_second"], 1), _fmt(r["length"]["frames"]),
                _fmt(r["length"]["ended_before_limit"]), _fmt(r["prosody"]["generated"]["f0_median_hz"], 1),
                _fmt(delta.get("f0_median_hz"), 1), _fmt(delta.get("speaking_rate_hz"), 2),
                _fmt(r["voice"]["speaker_similarity"]), emotion,
            ]) + " |")
        out += ["", "| overall | value | skipped because |", "|---|---|---|"]
        for group in GROUPS:
            values = run["overall"][group]
            for name, value in values.items():
                if name != "skipped":
                    out.append(f"| {group}.{name} | {_fmt(value)} | {_fmt(values['skipped'].get(name, ''))} |")
        out.append("")
    if document.get("comparison"):
        a, b = (run["label"] for run in document["runs"])
        out += ["## Comparison", "", f"| metric | {a} | {b} | delta (b − a) |", "|---|---|---|---|"]
        for row in document["comparison"]:
            out.append(f"| {row['metric']} | {_fmt(row['a'])} | {_fmt(row['b'])} | {_fmt(row['delta'])} |")
        out.append("")
    return "\n".join(out)


PLOTTED = [("intelligibility", "wer", "WER (lower is better)"), ("intelligibility", "cer", "CER (lower is better)"),
           ("speed", "real_time_factor", "real-time factor (below 1: faster than real time)"),
           ("speed", "time_to_first_audio_s", "time to first audio (s)"),
           ("prosody", "mean_abs_delta_f0_median_hz", "|ΔF0 median| vs reference (Hz)"),
           ("length", "ended_before_limit_rate", "ended before the frame limit")]


def _png(document: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = document["runs"]
    figure, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    colors = plt.get_cmap("tab10")
    for axis, (group, name, title) in zip(axes.flat, PLOTTED):
        for index, run in enumerate(runs):
            value = run["overall"][group][name]
            axis.bar(index, 0.0 if value is None else value, color=colors(index))
            axis.annotate("skipped" if value is None else f"{value:.3g}", (index, 0.0 if value is None else value),
                          ha="center", va="bottom", fontsize=8)
        axis.set_xticks(range(len(runs)), [run["label"] for run in runs], fontsize=8)
        axis.set_title(title, fontsize=9)
    figure.suptitle(f"csmctl eval: {Path(document['prompts_file']).name}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_reports(document: dict, out: Path) -> list[Path]:
    """DIR/eval.json, DIR/eval.md and DIR/eval.png, each written atomically."""
    from csm_core.files import write_atomic

    return [
        write_atomic(out / "eval.json", json.dumps(document, indent=2, allow_nan=False, default=str) + "\n"),
        write_atomic(out / "eval.md", _markdown(document)),
        write_atomic(out / "eval.png", _png(document)),
    ]
