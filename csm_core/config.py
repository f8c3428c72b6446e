"""The configuration: pydantic models loaded from TOML, the environment and CLI flags.

Precedence, lowest first: defaults, the TOML file, ``CSM_*`` environment variables, CLI flags.
Environment variables name nested fields with ``__``: ``CSM_BACKEND=onnxruntime``,
``CSM_GENERATION__TEMPERATURE=0.6``, ``CSM_MODELS__PRESET=tiny``. Unknown keys are errors, so a typo
never passes silently. Invalid config raises :class:`ConfigError` naming each field and the reason,
before any model loads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from csm_core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "CSM_"
BENCH_ENV_PREFIX = "CSM_BENCH_"  # the benchmark suite's own variables (benchmarks/conftest.py), not settings
DEFAULT_EMOTIONS = ("happy", "calm", "excited", "sad", "angry", "neutral")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationSettings(_Model):
    """How CSM samples speech. ``max_new_frames`` counts 80 ms frames (12.5 per second)."""

    max_new_frames: int = Field(250, ge=1, le=2048, description="frames of audio to generate at most")
    max_audio_length_ms: float | None = Field(None, gt=0, description="caps max_new_frames when set")
    temperature: float = Field(0.9, ge=0.0, le=5.0, description="0 means greedy")
    top_k: int = Field(50, ge=1, description="sample among the k most likely codes")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    seed: int | None = Field(None, description="seed for reproducible sampling")
    max_silent_frames: int = Field(40, ge=1, description="stop after this many silent frames in a row")
    trim_context: bool = Field(True, description="drop the oldest context to fit the 2048-position budget")

    def frame_limit(self, frame_rate: float = 12.5) -> int:
        """The number of frames allowed by both limits."""
        if self.max_audio_length_ms is None:
            return self.max_new_frames
        return max(1, min(self.max_new_frames, int(self.max_audio_length_ms / 1000 * frame_rate)))


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
    speaker: int | None = Field(None, ge=0, description="speaker id of the clip; default: `speaker`")

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


class Settings(_Model):
    """Everything a pipeline needs to know before it loads anything."""

    backend: str = Field("pytorch", description="backend for every stage that does not name its own")
    backends: dict[str, str] = Field(default_factory=dict, description="per-stage backend overrides")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    allow_fallback: bool = Field(False, description="continue on CPU when CUDA fails, and report it")
    precision: Precision = "fp32"
    component_precision: dict[str, Precision] = Field(default_factory=dict)
    speaker: int = Field(0, ge=0, description="speaker id of the reply voice")
    user_speaker: int = Field(1, ge=0, description="speaker id given to the user's turns in the context")
    models: ModelSources = Field(default_factory=ModelSources)
    stages: StageSelection = Field(default_factory=StageSelection)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
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
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")

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

    def backend_for(self, stage: str) -> str:
        return self.backends.get(stage, self.backend)

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "csm-multi"


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def env_overrides(environ: Mapping[str, str]) -> dict:
    """``CSM_A__B=value`` -> ``{"a": {"b": value}}``; JSON values (lists, numbers) are parsed."""
    overrides: dict = {}
    reserved = {"CSM_LOAD_PLUGINS", "CSM_TRACE_HOOKS"}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in reserved or key.startswith(BENCH_ENV_PREFIX):
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        _set_dotted(overrides, key[len(ENV_PREFIX):].lower().replace("__", "."), value)
    return overrides


def read_toml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            reason = "unknown setting (check the spelling; see docs/config.md)"
        lines.append(f"  {field}: {reason} (got {item.get('input')!r})")
    return "\n".join(lines)


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
    data = _deep_merge(data, env_overrides(environ))
    cli: dict = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(cli, dotted, value)
    data = _deep_merge(data, cli)
    sources = ", ".join(
        s for s in (f"file {config_path}" if config_path else "", "environment", "flags") if s
    )
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, sources)) from None
