"""The configuration: pydantic models loaded from TOML, the environment and CLI flags.

Precedence, lowest first: defaults, the TOML file, ``CSM_*`` environment variables, CLI flags.
Environment variables name nested fields with ``__``: ``CSM_BACKEND=onnxruntime``,
``CSM_GENERATION__TEMPERATURE=0.6``, ``CSM_MODELS__PRESET=tiny``. Unknown keys are errors, so a typo
never passes silently. Invalid config raises :class:`ConfigError` naming each field and the reason,
before any model loads, in one line.

Environment variables: a ``CSM_*`` variable whose first part names no setting belongs to something
else (``CSM_HOME`` of another program, a plugin's own variables) and is ignored, said at
INFO level (logger ``csm.config``, shown by ``--verbose``), unless it looks like a misspelt setting
(``CSM_BACKNED``, ``CSM_GENERATION_TOP_K`` with one underscore): that is an error that names the
setting meant. Below a known setting every key must exist (``CSM_GENERATION__TOPK`` is an error).
``CSM_LOAD_PLUGINS``, ``CSM_TRACE_HOOKS`` (the plugin manager's) and ``CSM_BENCH_*`` (the benchmark
suite's) are not settings.

The config file must be a regular UTF-8 file of at most :data:`MAX_CONFIG_BYTES`; an explicit
``cache_dir`` must be a folder this process can create files in (or be creatable).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from csm_core.errors import ConfigError, CsmError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("csm.config")

ENV_PREFIX = "CSM_"
RESERVED_ENV = frozenset({"CSM_LOAD_PLUGINS", "CSM_TRACE_HOOKS"})  # the plugin manager's, not settings
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; anything over 1 MiB is the wrong file
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits
MAX_SPEAKER_ID = 1023  # CSM writes speaker ids as text, "[0]", "[1]": a larger id is a mistake (a seed, a port)
BENCH_ENV_PREFIX = "CSM_BENCH_"  # the benchmark suite's own variables (benchmarks/conftest.py), not settings
MAX_BATCH = 64  # utterances generated together at most (rows of the KV caches)


class _Model(BaseModel):
    """Unknown keys, NaN and infinities are errors; so is an empty string anywhere (an empty path would
    mean the current folder, an empty name nothing): leave the setting out instead."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: leave the setting out for its default, or give a value")
        return value


class GenerationSettings(_Model):
    """How CSM samples speech. ``max_new_frames`` counts 80 ms frames (12.5 per second)."""

    max_new_frames: int = Field(250, ge=1, le=2048, description="frames of audio to generate at most")
    max_audio_length_ms: float | None = Field(None, gt=0, description="caps max_new_frames when set")
    temperature: float = Field(0.9, ge=0.0, le=5.0, description="0 means greedy")
    top_k: int = Field(50, ge=1, description="sample among the k most likely codes")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed for reproducible sampling (0 .. 2**64-1)")
    max_silent_frames: int = Field(40, ge=1, description="stop after this many silent frames in a row")
    trim_context: bool = Field(
        True,
        description="choose the context within the position budget (the context policy, [context]); false: "
        "pass the whole context, and a prompt that does not fit is an error",
    )
    max_batch: int | None = Field(
        None,
        description=f"speaking several texts (speak_many): generate up to this many together in one batch "
        f"(1..{MAX_BATCH} rows of the model's caches); null: speak them one by one",
    )

    @field_validator("max_batch")
    @classmethod
    def _batch_rows(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_BATCH:
            raise ValueError(
                f"must be 1..{MAX_BATCH} utterances generated together (rows of one batch); "
                "leave it out to speak several texts one by one"
            )
        return value

    def frame_limit(self, frame_rate: float = 12.5) -> int:
        """The number of frames allowed by both limits."""
        if self.max_audio_length_ms is None:
            return self.max_new_frames
        return max(1, min(self.max_new_frames, int(self.max_audio_length_ms / 1000 * frame_rate)))


class ContextSettings(_Model):
    """Which context CSM conditions on when it speaks: the context policy (:mod:`csm_core.context_policy`).

    The current turn is always kept, the voice profile is pinned next, then the most recent turns, newest
    first, while they fit the budget. Applies while ``generation.trim_context`` is true.
    """

    budget_positions: int | None = Field(
        None,
        description="backbone positions the context and the text to speak may take at most (the smaller of "
        "this and the model's window minus the frames to generate is used; smaller: cheaper prefill, less "
        "context); null: the model's window minus the frames to generate",
    )
    keep_text_of_dropped: bool = Field(
        False,
        description="an older turn whose audio no longer fits the budget stays in the context as its text "
        "alone (a few positions) instead of being dropped",
    )

    @field_validator("budget_positions")
    @classmethod
    def _positive_budget(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(
                "must be at least 1 position (it holds the context and the text to speak); leave it out "
                "for the model's window minus the frames to generate"
            )
        return value


class EmotionParams(_Model):
    """Generation parameters one emotion maps to."""

    temperature: float = Field(ge=0.0, le=5.0)
    top_k: int = Field(ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)


def default_emotion_map() -> dict[str, EmotionParams]:
    """Defaults: livelier emotions sample wider, calmer ones narrower (see docs/config.md)."""
    table = {
        "happy": (0.8, 30),
        "calm": (0.5, 20),
        "excited": (0.9, 35),
        "sad": (0.6, 20),
        "angry": (0.85, 35),
        "neutral": (0.7, 25),
    }
    return {name: EmotionParams(temperature=t, top_k=k) for name, (t, k) in table.items()}


class ModelSources(_Model):
    """Where weights come from. A ``preset`` builds random weights of that size instead."""

    preset: str | None = Field(None, description="random-weight preset: tiny, small or csm-1b")
    model_path: Path | None = Field(None, description="a CSM checkpoint directory (wins over the rest)")
    model_dir: Path | None = Field(None, description="the configured directory for CSM weights")
    repo_id: str = Field("sesame/csm-1b", description="looked up in the Hugging Face cache, offline")
    model_flavor: str | None = Field(None, description="checkpoint layout: transformers, sesame, sesame-ckpt")
    mimi_path: Path | None = None
    mimi_repo_id: str = "kyutai/mimi"
    llm: str | None = Field(None, description="a local path or cached repo id of a chat model")
    asr: str | None = Field(None, description="a local path or cached repo id of a Whisper model")


class StageSelection(_Model):
    """Which registered implementation runs each stage (see `csmctl plugins`)."""

    tokenizer: str = "mimi"
    transcriber: str = "whisper"
    sentiment: str = "prosody"
    llm: str = "transformers"
    tts: str = "csm"


Precision = Literal["fp32", "fp16", "bf16"]


class VoiceSettings(_Model):
    """The voice profile: a reference clip and its transcript, given to CSM as pinned context.

    The clip (any WAV/FLAC, any rate) is encoded once with the tokenizer stage and cached under
    ``<cache_dir>/profiles/`` (see :mod:`csm_core.voice_profile`).
    """

    audio: Path | None = Field(None, description="reference clip of the voice (WAV/FLAC, any rate)")
    text: str | None = Field(None, description="transcript of the reference clip")
    speaker: int | None = Field(None, ge=0, le=MAX_SPEAKER_ID, description="speaker id of the clip; default: `speaker`")

    @model_validator(mode="after")
    def _audio_with_text(self) -> "VoiceSettings":
        if (self.audio is None) != (self.text is None):
            given, missing = ("voice.audio", "voice.text") if self.audio is not None else ("voice.text", "voice.audio")
            raise ValueError(
                f"{given} is set but {missing} is not: a voice profile needs both voice.audio (the clip) "
                "and voice.text (its transcript), or neither"
            )
        if self.text is not None and not self.text.strip():
            raise ValueError("voice.text is empty: give the transcript of voice.audio")
        return self


# The keys of ``component_precision``: what each names, and what it defaults to.
PRECISION_COMPONENTS: dict[str, str] = {
    "csm": "both CSM transformer parts (backbone and decoder), unless those are named themselves",
    "backbone": "the CSM backbone's transformer layers (default: csm, then precision)",
    "decoder": "the CSM depth decoder's transformer layers (default: csm, then precision)",
    "codec": "the Mimi codec (default fp32 whatever precision says: audio quality depends on it)",
    "transcriber": "the ASR model of the transcriber stage (default: precision)",
    "llm": "the reply language model (default: precision)",
}


# The keys of ``weight_quantization``: the CSM transformer parts whose linear layers may hold quantized weights.
WEIGHT_QUANTIZED_PARTS: dict[str, str] = {
    "csm": "both CSM transformer parts, unless those are named themselves",
    "backbone": "the linear layers of the CSM backbone's transformer layers",
    "decoder": "the linear layers of the CSM depth decoder's transformer layers",
}


class WeightQuantization(_Model):
    """Weight-only quantization of a CSM part's transformer linear layers (``[weight_quantization.<part>]``):
    ``bits`` per weight, one scale per ``block_size`` weights along the input dimension. Embeddings,
    heads, norms and Mimi are never quantized; the backends carry it out (docs/optimizers.md)."""

    bits: Literal[4, 8] = Field(description="bits per stored weight: 8 or 4")
    block_size: int = Field(128, description="weights per scale along the input dimension: a power of two, 16..256")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if not 16 <= value <= 256 or value & (value - 1):
            raise ValueError("must be a power of two from 16 to 256 (16, 32, 64, 128, 256)")
        return value


class Settings(_Model):
    """Everything a pipeline needs to know before it loads anything."""

    backend: str = Field("pytorch", description="backend for every stage that does not name its own")
    backends: dict[str, str] = Field(default_factory=dict, description="per-stage backend overrides")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    allow_fallback: bool = Field(False, description="continue on CPU when CUDA fails, and report it")
    precision: Precision = "fp32"
    component_precision: dict[str, Precision] = Field(default_factory=dict)
    weight_quantization: dict[str, WeightQuantization] = Field(
        default_factory=dict, description="quantized weights of the CSM parts' linear layers, by part (csm, backbone, decoder)"
    )
    speaker: int = Field(0, ge=0, le=MAX_SPEAKER_ID, description="speaker id of the reply voice")
    user_speaker: int = Field(
        1, ge=0, le=MAX_SPEAKER_ID, description="speaker id given to the user's turns in the context"
    )
    models: ModelSources = Field(default_factory=ModelSources)
    stages: StageSelection = Field(default_factory=StageSelection)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    context: ContextSettings = Field(
        default_factory=ContextSettings, description="which context CSM conditions on (the context policy)"
    )
    emotions: dict[str, EmotionParams] = Field(default_factory=default_emotion_map)
    voice: VoiceSettings = Field(default_factory=VoiceSettings, description="the voice profile")
    optimizers: list[str] = Field(default_factory=list, description="optimizers to enable, by name")
    loading: Literal["eager", "progressive"] = Field(
        "eager", description="preload builds stages before returning (eager) or in the background (progressive)"
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options of stage implementations and optimizers, by their name"
    )
    cache_dir: Path | None = Field(None, description="exported graphs and engines; default ~/.cache/csm-multi")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @field_validator("backends")
    @classmethod
    def _stage_names(cls, value: dict[str, str]) -> dict[str, str]:
        known = set(StageSelection.model_fields)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}: choose one of {', '.join(sorted(known))}")
        return value

    @field_validator("component_precision")
    @classmethod
    def _precision_components(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(PRECISION_COMPONENTS))
        if unknown:
            raise ValueError(
                f"unknown component {unknown[0]!r}: choose one of {', '.join(PRECISION_COMPONENTS)}"
            )
        return value

    @field_validator("weight_quantization")
    @classmethod
    def _quantized_parts(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(WEIGHT_QUANTIZED_PARTS))
        if unknown:
            raise ValueError(f"unknown part {unknown[0]!r}: choose one of {', '.join(WEIGHT_QUANTIZED_PARTS)}")
        return value

    @field_validator("optimizers")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"{duplicates[0]!r} is listed more than once")
        return value

    @model_validator(mode="after")
    def _one_model_source(self) -> "Settings":
        if self.models.preset and self.models.model_path:
            raise ValueError("models.preset and models.model_path are both set: choose one")
        if self.models.preset and self.models.model_flavor:
            raise ValueError(
                "models.model_flavor (--model-flavor) names a checkpoint's layout, but models.preset "
                "(--preset) builds random weights in memory, which have none: drop one of them"
            )
        return self

    def precision_of(self, component: str) -> str:
        """The precision ("fp32", "fp16", "bf16") of ``component`` (a key of :data:`PRECISION_COMPONENTS`).

        ``backbone``/``decoder``: their own entry, else ``csm``, else ``precision``; ``codec``: its entry,
        else fp32; any other: its entry, else ``precision``.
        """
        if component not in PRECISION_COMPONENTS:
            raise ValueError(f"precision_of: unknown component {component!r}; choose one of {', '.join(PRECISION_COMPONENTS)}")
        table = self.component_precision
        if component in ("backbone", "decoder"):
            return table.get(component, table.get("csm", self.precision))
        if component == "codec":
            return table.get("codec", "fp32")
        return table.get(component, self.precision)

    def weight_quantization_of(self, part: str) -> "WeightQuantization | None":
        """How the linear weights of CSM ``part`` (``backbone``/``decoder``) are stored: its own entry of
        ``weight_quantization``, else the ``csm`` entry; None: unquantized (the part's precision)."""
        if part not in ("backbone", "decoder"):
            raise ValueError(f"weight_quantization_of: unknown part {part!r}; choose backbone or decoder")
        table = self.weight_quantization
        return table.get(part, table.get("csm"))

    def backend_for(self, stage: str) -> str:
        return self.backends.get(stage, self.backend)

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "csm-multi"


def _deep_merge(base: dict, update: Mapping, source: str = "", where: str = "") -> dict:
    """``base`` with ``update`` laid over it, table by table. A value of ``base`` where ``update`` has a
    table is an error (``generation = 5`` in the file, ``--top-k`` on the command line): it would
    otherwise vanish without a word."""
    merged = dict(base)
    for key, value in update.items():
        dotted = f"{where}{key}"
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value, source, dotted + ".")
        elif isinstance(value, Mapping) and key in merged:
            raise ConfigError(
                f"invalid configuration ({source}): {dotted}: must be a table of settings (got {_shown(merged[key])})"
            )
        else:
            merged[key] = value
    return merged


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


_warned_env: set[str] = set()


def _meant_variable(key: str, top: str) -> str | None:
    """The variable an unknown ``key`` (first part ``top``) looks like a misspelling of, or None."""
    fields = list(Settings.model_fields)
    defaults = Settings()
    tables = [name for name in fields if isinstance(getattr(defaults, name), (BaseModel, dict))]
    for name in tables:
        if top.startswith(name + "_"):  # CSM_GENERATION_TOP_K: one underscore where two belong
            prefix = ENV_PREFIX + name.upper()
            return prefix + "__" + key[len(prefix) + 1:]
    close = difflib.get_close_matches(top, fields, n=1, cutoff=0.85)
    return ENV_PREFIX + close[0].upper() if close else None


def env_overrides(environ: Mapping[str, str]) -> dict:
    """``CSM_A__B=value`` -> ``{"a": {"b": value}}``; JSON values (lists, numbers) are parsed.

    A variable whose first part is no setting is ignored (logged at INFO), or is a :class:`ConfigError`
    when it looks like a misspelt one; so is one that sets a table and a key inside it at once
    (``CSM_GENERATION`` beside ``CSM_GENERATION__TOP_K``).
    """
    chosen: dict[str, tuple[str, Any]] = {}  # dotted name -> (variable, value)
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or key in RESERVED_ENV or key.startswith(BENCH_ENV_PREFIX):
            continue
        dotted = key[len(ENV_PREFIX):].lower().replace("__", ".")
        top = dotted.split(".")[0]
        if top not in Settings.model_fields:
            meant = _meant_variable(key, top)
            if meant is not None:
                raise ConfigError(
                    f"environment variable {key} names no setting: did you mean {meant}? "
                    "(nested settings are joined by two underscores; see docs/config.md)"
                )
            if key not in _warned_env:
                _warned_env.add(key)
                log.info("ignoring environment variable %s: it names no setting (see docs/config.md)", key)
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        chosen[dotted] = (key, value)
    for dotted, (key, _) in chosen.items():
        for other, (other_key, _) in chosen.items():
            if other.startswith(dotted + "."):
                raise ConfigError(
                    f"environment variables {key} and {other_key} both set {dotted!r}: unset one of them"
                )
    overrides: dict = {}
    for dotted, (_, value) in chosen.items():
        _set_dotted(overrides, dotted, value)
    return overrides


def read_toml(path: Path) -> dict:
    """The TOML file at ``path`` as a dict; a :class:`ConfigError` that says what is wrong with it
    (missing, a folder, not a regular file, unreadable, larger than :data:`MAX_CONFIG_BYTES`, not
    UTF-8, not TOML)."""
    path = Path(path)
    name = repr(str(path))
    if not path.exists():
        raise ConfigError(f"config file {name} does not exist: check the path given to --config")
    if path.is_dir():
        raise ConfigError(f"config file {name} is a folder, not a file: give the path of the TOML file")
    if not path.is_file():
        raise ConfigError(f"config file {name} is not a regular file (a device or a pipe): give a TOML file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {name} is {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes: "
                "is it the right file?"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read ({exc.strerror or exc}): check its permissions") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark, as some editors save
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {name} is not valid TOML: {exc}") from None


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line: ``invalid configuration (<source>): <field>: <reason> (got <value>); <field>: ...``."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            reason = "unknown setting (check the spelling; see docs/config.md)"
        elif item["type"] == "finite_number":
            reason = "must be a finite number"
        # a check of the whole config names its fields in the reason, and has no one value to show
        problems.append(f"{field}: {reason} (got {_shown(item.get('input'))})" if item["loc"] else reason)
    return f"invalid configuration ({source}): " + "; ".join(problems)


def plugin_options(settings: Settings, name: str, model: type[BaseModel]) -> BaseModel:
    """The config table ``[options.<name>]`` validated by a plugin's own pydantic ``model``.

    An invalid table raises :class:`ConfigError` naming the table, each field and the reason.
    """
    try:
        return model(**settings.options.get(name, {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"[options.{name}]")) from None


def apply_overrides(settings: Settings, overrides: Mapping[str, Any], source: str) -> Settings:
    """``settings`` with dotted ``overrides`` (``{"generation.top_k": 20}``) applied and validated again.

    An override that makes the config invalid raises :class:`ConfigError` naming ``source``.
    """
    data = settings.model_dump()
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_settings(
    config_path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, ``CSM_*`` variables and dotted CLI ``overrides``.

    ``overrides`` maps dotted field names to values (``{"generation.temperature": 0.5}``); ``None``
    values are ignored, so CLI flags that were not given do not override anything.
    """
    environ = os.environ if environ is None else environ
    data: dict = read_toml(Path(config_path)) if config_path else {}
    data = _deep_merge(data, env_overrides(environ), f"file {config_path}")
    cli: dict = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(cli, dotted, value)
    data = _deep_merge(data, cli, f"file {config_path}, environment" if config_path else "environment")
    sources = ", ".join(
        s for s in (f"file {config_path}" if config_path else "", "environment", "flags") if s
    )
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, sources)) from None
    if settings.cache_dir is not None:
        from csm_core.output_paths import check_output_folder

        try:
            check_output_folder(settings.cache_dir, "cache_dir")
        except CsmError as exc:
            raise ConfigError(f"invalid configuration ({sources}): {exc}") from None
    return settings
