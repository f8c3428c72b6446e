"""Whisper's greedy token loop, the same on every backend.

:func:`decode_speech` drives any :class:`csm_core.components.SpeechToTextEngine` over one window of
log-mel features and gives the token ids transformers' ``WhisperForConditionalGeneration.generate``
gives for that window with ``do_sample=False, num_beams=1`` (short-form, no timestamps). What
``generate`` does there, and this module with it:

- the forced prompt (``_retrieve_init_tokens``): ``<|startoftranscript|>``, the language (given, or
  detected: the decoder's logits after ``<|startoftranscript|>`` alone, restricted to the language
  tokens, argmax), the task when one is given (or ``transcribe`` when only a language is), and
  ``<|notimestamps|>``; with neither language nor task the generation config's legacy
  ``forced_decoder_ids`` fill positions 1, 2, ... instead;
- the logits processors of greedy Whisper: ``suppress_tokens`` at every step and
  ``begin_suppress_tokens`` at the first generated position only (their logits set to -inf);
- argmax (first index on ties) over float32 logits; stop at an EOS id (included in the result) or
  after ``max_new_tokens``; prompt + ``max_new_tokens`` longer than the decoder's positions is refused,
  as ``generate`` refuses it.

:func:`whisper_decoding` reads those settings from a generation config (any object with its attributes:
nothing here imports transformers). Timestamps are not produced: a config's ``return_timestamps`` is
ignored (a transcriber wants the text); settings that would add other logits processors
(``repetition_penalty``, ``no_repeat_ngram_size``, ...) are refused with their names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

TASKS = ("transcribe", "translate")
UNSUPPORTED = {  # generation-config field -> the value that adds no logits processor
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
}


@dataclass(frozen=True)
class WhisperDecoding:
    """What the greedy loop forces, suppresses and stops at.

    ``prompt`` is the forced prompt; a ``None`` in it is the language slot, filled by detection among
    ``language_ids``. ``eos_ids`` end the text (the first one produced is the last id returned).
    """

    prompt: tuple[int | None, ...]
    language_ids: tuple[int, ...] = ()
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    eos_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.prompt or self.prompt[0] is None:
            raise ValueError("the forced prompt must start with <|startoftranscript|> (decoder_start_token_id)")
        if None in self.prompt and not self.language_ids:
            raise ValueError("the prompt has a language slot to detect but the config names no language tokens")

    @property
    def detects_language(self) -> bool:
        return None in self.prompt


@dataclass(frozen=True)
class SpeechTokens:
    """One window's result: the forced ``prompt`` that was fed and the generated ``tokens`` (EOS included
    when it was produced)."""

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (int(value),)
    return tuple(int(v) for v in value)


def _language_id(language: str, lang_to_id: Mapping[str, int], language_codes: Mapping[str, str]) -> int:
    """``generate``'s ``language_to_id``: a token (``<|en|>``), a code (``en``) or a name (``english``)."""
    language = language.lower()
    if language in lang_to_id:
        token = language
    elif language in language_codes:
        token = f"<|{language_codes[language]}|>"
    elif language in language_codes.values() or not language_codes:
        token = f"<|{language}|>"
    else:
        raise ValueError(f"unsupported language {language!r}: use a code such as 'en' or a name such as 'english'")
    if token not in lang_to_id:
        raise ValueError(f"{token} is not one of the model's languages (generation_config.lang_to_id)")
    return int(lang_to_id[token])


def whisper_decoding(
    generation_config,
    language: str | None = None,
    task: str | None = None,
    language_codes: Mapping[str, str] | None = None,
) -> WhisperDecoding:
    """The :class:`WhisperDecoding` that ``generate(features, language=..., task=...)`` applies greedily
    with this ``generation_config``.

    ``language_codes`` maps language names to codes (``{"english": "en"}``, transformers'
    ``TO_LANGUAGE_CODE``) so that names are accepted as ``generate`` accepts them.
    """
    gc = generation_config
    unsupported = []
    for name, neutral in UNSUPPORTED.items():
        value = getattr(gc, name, None)
        if value is not None and value != neutral:
            unsupported.append(f"{name}={value!r}")
    if unsupported:
        raise ValueError(f"the Whisper token loop does not apply {', '.join(unsupported)} (generation config)")
    multilingual = getattr(gc, "is_multilingual", None)
    if multilingual is False and (language is not None or task is not None):
        raise ValueError("an English-only Whisper takes no language or task")
    if task is not None and task not in TASKS:
        raise ValueError(f"task {task!r}: must be one of {', '.join(TASKS)}")
    lang_to_id = getattr(gc, "lang_to_id", None)
    task_to_id = getattr(gc, "task_to_id", None)
    if language is not None and lang_to_id is None:
        raise ValueError("the generation config has no lang_to_id: it cannot force a language")
    if task is not None and task_to_id is None:
        raise ValueError("the generation config has no task_to_id: it cannot force a task")
    slot = object()  # the language slot, until we know whether it is detected
    prompt: list = [int(gc.decoder_start_token_id)]
    if task is None and language is None:  # legacy forced_decoder_ids: [[1, lang], [2, task], ...]
        forced = [list(pair) for pair in (getattr(gc, "forced_decoder_ids", None) or [])]
        if forced and forced[0][0] == 1:
            position = 1
            while forced and forced[0][0] == position:
                prompt.append(slot if forced[0][1] is None else int(forced[0][1]))
                forced, position = forced[1:], position + 1
            if forced:
                raise ValueError(f"forced_decoder_ids {forced} do not follow Whisper's prompt pattern")
    undefined = len(prompt) <= 1 or prompt[1] is slot
    language_ids: tuple[int, ...] = ()
    if language is not None:
        chosen = _language_id(language, lang_to_id, language_codes or {})
        if len(prompt) > 1:
            prompt[1] = chosen
        else:
            prompt.append(chosen)
    elif lang_to_id is not None and undefined:
        language_ids = tuple(int(i) for i in lang_to_id.values())
        if len(prompt) > 1:
            prompt[1] = None
        else:
            prompt.append(None)
    if task is not None:
        prompt.append(int(task_to_id[task]))
    elif language is not None and task_to_id is not None:
        if not any(t in prompt for t in task_to_id.values()):
            prompt.append(int(task_to_id["transcribe"]))
    no_timestamps = getattr(gc, "no_timestamps_token_id", None)
    if no_timestamps is not None and prompt[-1] != no_timestamps:
        prompt.append(int(no_timestamps))
    prompt = [t for t in prompt if t is not slot]
    return WhisperDecoding(
        prompt=tuple(prompt),
        language_ids=language_ids,
        suppress_tokens=_ids(getattr(gc, "suppress_tokens", None)),
        begin_suppress_tokens=_ids(getattr(gc, "begin_suppress_tokens", None)),
        eos_ids=_ids(getattr(gc, "eos_token_id", None)),
    )


def _argmax(logits: torch.Tensor, masked: Sequence[int] = (), allowed: Sequence[int] | None = None) -> int:
    scores = logits.reshape(1, -1).float().clone()
    if allowed is not None:
        keep = torch.full_like(scores, float("-inf"))
        keep[:, list(allowed)] = 0.0
        scores = scores + keep
    if masked:
        scores[:, list(masked)] = float("-inf")
    return int(scores.argmax(dim=-1)[0])


def detect_language(engine, encoder_hidden: torch.Tensor, start_id: int, language_ids: Sequence[int]) -> int:
    """The language token whose logit after ``<|startoftranscript|>`` alone is highest."""
    engine.reset(encoder_hidden)
    logits = engine.prefill(torch.tensor([[start_id]], dtype=torch.int64))
    return _argmax(logits, allowed=language_ids)


def decode_speech(engine, features: torch.Tensor, decoding: WhisperDecoding, max_new_tokens: int) -> SpeechTokens:
    """Greedy Whisper decoding of one window of ``features`` [1,n_mels,frames] on ``engine``.

    Raises ``ValueError`` when prompt + ``max_new_tokens`` exceeds the engine's ``max_positions`` (as
    ``generate`` does against ``max_target_positions``).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    if len(decoding.prompt) + max_new_tokens > engine.max_positions:
        raise ValueError(
            f"the forced prompt ({len(decoding.prompt)} tokens) + max_new_tokens={max_new_tokens} is more than the "
            f"{engine.max_positions} decoder positions of the model (max_target_positions): lower max_new_tokens"
        )
    hidden = engine.encode(features)
    prompt = list(decoding.prompt)
    if decoding.detects_language:
        prompt[prompt.index(None)] = detect_language(engine, hidden, prompt[0], decoding.language_ids)
    stops = set(decoding.eos_ids)
    engine.reset(hidden)
    logits = engine.prefill(torch.tensor([prompt], dtype=torch.int64))
    out: list[int] = []
    while True:
        masked = decoding.suppress_tokens + (decoding.begin_suppress_tokens if not out else ())
        token = _argmax(logits, masked)
        out.append(token)
        if token in stops or len(out) == max_new_tokens:
            return SpeechTokens(tuple(prompt), tuple(out))
        logits = engine.step(torch.tensor([[token]], dtype=torch.int64))
