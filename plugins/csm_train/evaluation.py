"""``csmctl eval``: the prompt set and the metric functions (numpy and jiwer; no model runtime here).

- :func:`load_prompts`: a JSONL file of prompts, checked line by line (errors name the line);
- :func:`error_rates`: WER and CER of a transcript against the prompt text (jiwer, after lower-casing
  and removing punctuation);
- :func:`prosody_summary` / :func:`prosody_deltas`: F0 median and spread, speaking rate and pauses from
  the prosody analyzer (:func:`csm_listen.prosody.extract_prosody`), generated minus reference;
- :func:`speaker_similarity`: cosine similarity of speaker embeddings (``resemblyzer``, optional);
- :func:`arousal_ordering`: whether the arousal the sentiment stage hears is ordered as the arousal of the
  emotions that were asked for.

A metric that cannot be computed is ``None`` with its reason under the group's ``skipped`` key (see
:func:`metric_group`): a field is never silently missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from csm_core.errors import CsmError

__all__ = [
    "Prompt", "load_prompts", "normalize_text", "error_rates", "corpus_error_rates", "PROSODY_FIELDS",
    "prosody_summary", "prosody_deltas", "speaker_similarity", "speaker_similarity_unavailable", "arousal_ordering",
    "metric_group",
]

PROMPT_FIELDS = ("text", "voice", "voice_text", "emotion", "reference")


@dataclass(frozen=True)
class Prompt:
    """One line of the prompt set. Paths are resolved against the prompt file's folder."""

    line: int
    text: str
    voice: Path | None = None
    voice_text: str | None = None
    emotion: str | None = None
    reference: Path | None = None

    def to_dict(self) -> dict:
        return {
            "line": self.line, "text": self.text, "voice": None if self.voice is None else str(self.voice),
            "voice_text": self.voice_text, "emotion": self.emotion,
            "reference": None if self.reference is None else str(self.reference),
        }


def _path(where: str, row: dict, name: str, folder: Path) -> Path | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CsmError(f"{where}: field {name!r} must be a path to an audio file, got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise CsmError(f"{where}: {name} file {value!r} does not exist (relative paths are relative to the prompt file)")
    return path


def load_prompts(path: str | Path, emotions: Iterable[str] | None = None) -> tuple[list[Prompt], list[str]]:
    """The prompts of the JSONL file ``path`` and notes (unknown fields); a CsmError naming the line for
    a missing file, a line that is not a JSON object, an empty ``text``, a ``voice`` without
    ``voice_text``, a missing audio file or an ``emotion`` not in ``emotions``."""
    from csm_core.user_text import check_text

    path = Path(path)
    if not path.is_file():
        raise CsmError(f"PROMPTS {str(path)!r} does not exist or is not a file: give a JSONL file, one prompt object a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CsmError(f"PROMPTS {str(path)!r} cannot be read as UTF-8 text ({exc})") from None
    known = None if emotions is None else list(emotions)
    prompts, notes, unknown = [], [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CsmError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise CsmError(f"{where}: expected a JSON object like {{\"text\": \"Hello.\"}}, got {type(row).__name__}")
        text = row.get("text")
        if not isinstance(text, str):
            raise CsmError(f"{where}: field 'text' (the words to speak) is missing or not a string")
        check_text(text, f"{where}: field 'text'")
        voice = _path(where, row, "voice", path.parent)
        voice_text = row.get("voice_text")
        if voice is not None and (not isinstance(voice_text, str) or not voice_text.strip()):
            raise CsmError(f"{where}: 'voice' needs 'voice_text', the transcript of the voice clip")
        if voice is None and voice_text is not None:
            raise CsmError(f"{where}: 'voice_text' is given without 'voice' (the clip it transcribes)")
        emotion = row.get("emotion")
        if emotion is not None and (not isinstance(emotion, str) or (known is not None and emotion not in known)):
            raise CsmError(f"{where}: emotion {emotion!r} is not one of the configured emotions: {', '.join(known or [])}")
        for name in row:
            if name not in PROMPT_FIELDS:
                unknown.setdefault(name, number)
        prompts.append(Prompt(number, text, voice, voice_text, emotion, _path(where, row, "reference", path.parent)))
    if not prompts:
        raise CsmError(f"PROMPTS {str(path)!r} holds no prompt: write one JSON object a line, e.g. {{\"text\": \"Hello.\"}}")
    for name, number in unknown.items():
        notes.append(f"{path.name}: field {name!r} (first on line {number}) is not a prompt field and is ignored "
                     f"(fields: {', '.join(PROMPT_FIELDS)})")
    return prompts, notes


# -- intelligibility ----------------------------------------------------------------------------------
_PUNCTUATION = re.compile(r"[^\w\s']|_")


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), whitespace collapsed."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def corpus_error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """WER and CER over all pairs (errors summed over the corpus, divided by the reference length)."""
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    if not refs or any(not r for r in refs):
        raise ValueError("every reference text must have a word after normalization")
    # jiwer refuses an empty hypothesis: score it as all deletions by hand.
    words = sum(len(r.split()) for r in refs)
    chars = sum(len(r) for r in refs)
    pairs = [(r, h) for r, h in zip(refs, hyps) if h]
    word_errors = sum(len(r.split()) for r, h in zip(refs, hyps) if not h)
    char_errors = sum(len(r) for r, h in zip(refs, hyps) if not h)
    if pairs:
        w = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        word_errors += w.substitutions + w.deletions + w.insertions
        c = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
        char_errors += c.substitutions + c.deletions + c.insertions
    return {"wer": word_errors / words, "cer": char_errors / chars}


def error_rates(reference: str, hypothesis: str) -> dict[str, float]:
    """WER and CER of ``hypothesis`` against ``reference`` (both normalized by :func:`normalize_text`)."""
    return corpus_error_rates([reference], [hypothesis])


# -- prosody ------------------------------------------------------------------------------------------
PROSODY_FIELDS = {
    # name in the report: (field of csm_listen.prosody.ProsodyFeatures, what)
    "f0_median_hz": ("f0_median_hz", "median F0 of the voiced frames (Hz)"),
    "f0_spread_st": ("f0_std_semitones", "F0 range: robust spread (IQR / 1.349) in semitones"),
    "speaking_rate_hz": ("syllable_rate_hz", "syllable nuclei per second of speaking time"),
    "pause_count": ("pause_count", "pauses of at least 0.2 s inside the speech"),
    "pause_ratio": ("pause_ratio", "pause time / speech span"),
}


def prosody_summary(samples: np.ndarray, sample_rate: int) -> dict[str, float | None]:
    """The :data:`PROSODY_FIELDS` of a clip, from the prosody analyzer (every frame analysed)."""
    from csm_listen import extract_prosody

    features = extract_prosody(np.asarray(samples, dtype=np.float32), int(sample_rate))
    out = {}
    for name, (field, _) in PROSODY_FIELDS.items():
        value = getattr(features, field)
        out[name] = None if value is None else (int(value) if name == "pause_count" else float(value))
    return out


def prosody_deltas(generated: Mapping[str, float | None], reference: Mapping[str, float | None]) -> dict[str, float | None]:
    """Generated minus reference for each field both have (None where one lacks it)."""
    return {
        name: (None if generated.get(name) is None or reference.get(name) is None
               else float(generated[name]) - float(reference[name]))
        for name in PROSODY_FIELDS
    }


# -- voice --------------------------------------------------------------------------------------------
SIMILARITY_PACKAGE = "resemblyzer"
_encoder = None


def speaker_similarity_unavailable() -> str | None:
    """Why speaker similarity cannot be computed here, or None when it can."""
    if importlib.util.find_spec(SIMILARITY_PACKAGE) is None:
        return ("resemblyzer is not installed (pip install 'csm-multi[eval]': its speaker encoder ships its weights; "
                "it adds librosa, numba and scikit-learn)")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation
            import resemblyzer  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - reported as the metric's skip reason
        return f"resemblyzer cannot be imported ({type(exc).__name__}: {exc}; webrtcvad needs setuptools<81 for pkg_resources)"
    return None


def speaker_similarity(a: np.ndarray, a_rate: int, b: np.ndarray, b_rate: int) -> float:
    """Cosine similarity of the resemblyzer speaker embeddings of two clips (1: same voice)."""
    global _encoder
    from resemblyzer import VoiceEncoder, preprocess_wav

    if _encoder is None:
        _encoder = VoiceEncoder("cpu", verbose=False)
    embeddings = []
    for samples, rate in ((a, a_rate), (b, b_rate)):
        wav = preprocess_wav(np.asarray(samples, dtype=np.float32), source_sr=int(rate))
        if wav.size == 0:
            raise ValueError("no speech left after resemblyzer's silence trimming")
        embeddings.append(np.asarray(_encoder.embed_utterance(wav), dtype=np.float64))
    x, y = embeddings
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


# -- emotion ------------------------------------------------------------------------------------------
def arousal_ordering(requested: Sequence[float], heard: Sequence[float]) -> dict[str, Any]:
    """Over every pair of prompts whose requested arousal differs: the fraction in which the heard arousal
    is ordered the same way (1: every calmer request sounded calmer; 0.5: chance; ties heard count half)."""
    pairs = agree = 0.0
    for i in range(len(requested)):
        for j in range(i + 1, len(requested)):
            if requested[i] == requested[j]:
                continue
            pairs += 1
            asked = requested[j] - requested[i]
            got = heard[j] - heard[i]
            agree += 0.5 if got == 0 else float(math.copysign(1, asked) == math.copysign(1, got))
    return {"pairs": int(pairs), "agreement": agree / pairs if pairs else None}


def metric_group(values: Mapping[str, Any], reasons: Mapping[str, str] | None = None, default: str = "not computed") -> dict:
    """``values`` with ``skipped``: for every None value, why (``reasons[name]`` or ``default``)."""
    group = dict(values)
    reasons = reasons or {}
    group["skipped"] = {name: reasons.get(name, default) for name, value in values.items() if value is None}
    return group
