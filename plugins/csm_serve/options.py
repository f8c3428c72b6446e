"""``[options.serve]``: how ``csmctl serve`` listens, whom it lets in, and the limits it keeps.

Every field can be set in the config file (``[options.serve]``), through the environment
(``CSM_OPTIONS__SERVE__MAX_QUEUE=4``) or, for host and port, with ``--host``/``--port``. The API key
has its own variable too, ``CSM_SERVE_API_KEY``, which wins over the config (a key belongs in the
environment, not in a file that gets shared).

Security defaults: the server binds the loopback address only; without an API key every client that
can reach the port may use it (and a non-loopback host without a key is refused unless
``allow_open`` is set).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from csm_core.config import Settings, plugin_options
from csm_core.errors import ConfigError
from csm_core.user_text import MAX_TEXT_CHARS

OPTIONS_NAME = "serve"
API_KEY_ENV = "CSM_SERVE_API_KEY"

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")
"""The voice names OpenAI's speech API knows; clients such as pipecat's refuse any other name."""

DEFAULT_VOICE = "default"
"""The configured voice: ``speaker`` and the ``[voice]`` profile, when one is set."""


class ServeOptions(BaseModel):
    """``[options.serve]``."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; the loopback address by default")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    api_key: str | None = Field(None, min_length=8, description=f"bearer key clients must send ({API_KEY_ENV} wins)")
    allow_open: bool = Field(False, description="allow a non-loopback host without an API key")
    max_queue: int = Field(8, ge=1, le=10_000, description="requests waiting for the worker; more get 429")
    max_rows: int = Field(8, ge=1, le=64, description="speech requests generated together at most "
                          "(continuous batching; 1: one at a time)")
    max_streams: int = Field(32, ge=1, le=10_000, description="responses and WebSockets open at once; more get 429")
    retry_after_s: int = Field(1, ge=1, le=3600, description="the Retry-After of a 429")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest JSON body")
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest multipart upload (a clip)")
    max_upload_seconds: float = Field(60.0, gt=0, le=120.0, description="longest uploaded clip")
    max_text_chars: int = Field(MAX_TEXT_CHARS, ge=1, le=MAX_TEXT_CHARS, description="longest input text")
    max_conversations: int = Field(64, ge=1, le=100_000, description="conversations kept; the oldest goes first")
    conversation_ttl_s: float = Field(3600.0, gt=0, description="a conversation unused this long is forgotten")
    preload_conversation: bool = Field(
        False, description="load the transcriber, sentiment and llm stages at start-up (else on the first turn)"
    )
    voices_dir: Path | None = Field(None, description="where cloned voices are kept; default <cache_dir>/serve-voices")
    voice_map: dict[str, str | int] = Field(
        default_factory=dict,
        description="an OpenAI voice name -> a speaker id or a voice name; unmapped names use the default voice",
    )
    models: list[str] = Field(
        default_factory=lambda: ["csm", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"],
        min_length=1, description="model names accepted in requests",
    )
    threads: int | None = Field(None, ge=1, le=512, description="torch intra-op threads of the worker (default: torch's)")
    shutdown_grace_s: float = Field(10.0, ge=0, le=600, description="on SIGTERM, how long in-flight requests may finish")

    @field_validator("voice_map")
    @classmethod
    def _openai_names(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        unknown = sorted(set(value) - set(OPENAI_VOICES))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not an OpenAI voice name: choose from {', '.join(OPENAI_VOICES)}")
        return value


def serve_options(settings: Settings, environ: Mapping[str, str] | None = None, **flags) -> ServeOptions:
    """The serve options of ``settings`` (``[options.serve]``), then ``CSM_SERVE_API_KEY``, then the
    flags that were given (``host=``, ``port=``; None: not given). Raises :class:`ConfigError` naming
    the field and the reason, including an open host without a key."""
    environ = os.environ if environ is None else environ
    options = plugin_options(settings, OPTIONS_NAME, ServeOptions)
    updates = {name: value for name, value in flags.items() if value is not None}
    if environ.get(API_KEY_ENV):
        updates["api_key"] = environ[API_KEY_ENV]
    if updates:
        try:
            options = ServeOptions.model_validate({**options.model_dump(), **updates})
        except Exception as exc:  # a pydantic ValidationError: name what came from where
            raise ConfigError(f"invalid serve option (flags or {API_KEY_ENV}): {exc}") from None
    if options.api_key is None and not options.allow_open and not is_loopback(options.host):
        raise ConfigError(
            f"refusing to serve on {options.host!r} without an API key: set {API_KEY_ENV} (or "
            "[options.serve] api_key), bind 127.0.0.1, or set [options.serve] allow_open = true"
        )
    return options


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for :func:`csm_core.config.load_settings`: without ``CSM_SERVE_API_KEY``, which
    is this plugin's variable and names no setting."""
    environ = os.environ if environ is None else environ
    return {key: value for key, value in environ.items() if key != API_KEY_ENV}
