"""Cloned voices: a reference clip and its transcript, kept on disk, usable by name from every endpoint.

A voice is a voice profile (:mod:`csm_core.voice_profile`): its clip is encoded once with the
pipeline's tokenizer stage (and cached there, keyed by the clip's bytes and the codec), and the
profile segment is pinned as CSM's context whenever the voice speaks.

On disk, in the voices folder (``[options.serve] voices_dir``, default ``<cache_dir>/serve-voices``):
``<name>.wav`` (the clip, resampled to 24 kHz mono 16-bit) and ``<name>.json`` (transcript, speaker,
sha256, seconds, created). A name is 1-64 characters of letters, digits, ``-`` and ``_``, starting with a
letter or digit, and is none of OpenAI's voice names or ``default`` (those are aliases). Nothing else a
client sends becomes part of a path.

:func:`resolve_voice` turns a request's ``voice`` (a name, or ``{"id": name}``) into a
:class:`VoiceChoice`: ``default`` (the configured ``speaker`` and ``[voice]`` profile), an OpenAI name
(through ``[options.serve] voice_map``: a speaker id, a cloned voice or ``default``; unmapped names
are the default voice), or a cloned voice. An unknown name is a 400 that lists the voices there are.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csm_core.audio import Audio, write_wav
from csm_core.config import Settings, VoiceSettings
from csm_core.errors import CsmError
from csm_core.files import file_sha256, write_atomic
from csm_core.stages import Segment
from csm_core.voice_profile import encode_profile, tokenizer_encoder
from csm_serve.errors import ApiError, bad_request
from csm_serve.options import DEFAULT_VOICE, OPENAI_VOICES, ServeOptions

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED = frozenset((*OPENAI_VOICES, DEFAULT_VOICE))
MAX_TRANSCRIPT_CHARS = 2000


class VoiceExists(CsmError):
    """The name is taken (a built-in alias or a cloned voice)."""

    def api_error(self) -> ApiError:
        return ApiError(409, str(self), param="name", code="voice_exists")


@dataclass(frozen=True)
class StoredVoice:
    """A cloned voice as kept on disk."""

    name: str
    transcript: str
    speaker: int | None
    sha256: str
    seconds: float
    created: float

    def to_dict(self) -> dict:
        return {"id": self.name, "name": self.name, "object": "voice", "type": "cloned",
                "transcript": self.transcript, "speaker": self.speaker, "seconds": round(self.seconds, 3),
                "created_at": int(self.created)}


def check_name(name: Any, param: str = "name") -> str:
    """``name`` if it is a valid voice name, else a 400 that says what a name may be."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise bad_request(
            f"voice name {str(name)[:80]!r} is not valid: use 1-64 letters, digits, '-' or '_', starting "
            "with a letter or digit", param=param, code="invalid_voice_name")
    return name


class VoiceStore:
    """The cloned voices in ``folder``; safe to use from the handlers and the worker thread at once."""

    def __init__(self, folder: Path, settings: Settings):
        self.folder = Path(folder)
        self.settings = settings
        self._lock = threading.Lock()
        self._segments: dict[tuple[str, str], Segment] = {}  # (name, sha256) -> encoded profile
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CsmError(f"cannot create the voices folder {str(self.folder)!r} ({exc}): set "
                           "[options.serve] voices_dir to a writable folder") from None

    def _paths(self, name: str) -> tuple[Path, Path]:
        check_name(name)
        return self.folder / f"{name}.wav", self.folder / f"{name}.json"

    def get(self, name: str) -> StoredVoice | None:
        """The voice called ``name`` (checked), or None."""
        _, meta = self._paths(name)
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            return StoredVoice(name, str(data["transcript"]), data.get("speaker"), str(data["sha256"]),
                               float(data["seconds"]), float(data["created"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CsmError(f"voice {name!r} is damaged on disk ({exc}): delete it and create it again") from None

    def list(self) -> list[StoredVoice]:
        voices = []
        for meta in sorted(self.folder.glob("*.json")):
            if NAME_PATTERN.fullmatch(meta.stem):
                voice = self.get(meta.stem)
                if voice is not None:
                    voices.append(voice)
        return voices

    def temporary_clip(self) -> Path:
        """A fresh path in the voices folder for an upload being checked (not a voice name)."""
        return self.folder / f".upload-{uuid.uuid4().hex}"

    def check_new(self, name: str) -> None:
        """A 409 when ``name`` is a built-in voice name or a voice that exists."""
        _, meta = self._paths(name)
        if name in RESERVED:
            raise VoiceExists(f"{name!r} is a built-in voice name; choose another")
        if meta.exists():
            raise VoiceExists(f"voice {name!r} exists already: delete it first to replace it")

    def add(self, name: str, clip: Audio, transcript: str, speaker: int | None, pipeline) -> StoredVoice:
        """Keep ``clip`` (24 kHz mono) as voice ``name`` and encode its profile with ``pipeline``'s
        tokenizer (run on the worker thread). A name that exists is :class:`VoiceExists`; nothing is left
        behind when encoding fails."""
        wav, meta = self._paths(name)
        with self._lock:
            self.check_new(name)
            write_wav(wav, clip)
        try:
            voice = StoredVoice(name, transcript, speaker, file_sha256(wav), clip.duration_s, time.time())
            self.segment(voice, pipeline)  # encode now: a clip the tokenizer cannot take fails the upload
            with self._lock:
                write_atomic(meta, json.dumps({k: getattr(voice, k) for k in
                                               ("transcript", "speaker", "sha256", "seconds", "created")}))
        except BaseException:
            wav.unlink(missing_ok=True)
            raise
        return voice

    def delete(self, name: str) -> bool:
        """Remove voice ``name``; False when there is none."""
        wav, meta = self._paths(name)
        with self._lock:
            if not meta.exists():
                return False
            meta.unlink()
            wav.unlink(missing_ok=True)
            self._segments = {key: seg for key, seg in self._segments.items() if key[0] != name}
        return True

    def segment(self, voice: StoredVoice, pipeline) -> Segment:
        """The profile segment of ``voice`` (encoded with ``pipeline``'s tokenizer on first use)."""
        key = (voice.name, voice.sha256)
        with self._lock:
            cached = self._segments.get(key)
        if cached is not None:
            return cached
        wav, _ = self._paths(voice.name)
        if not wav.is_file():
            raise CsmError(f"voice {voice.name!r} was deleted")
        profile = encode_profile(VoiceSettings(audio=wav, text=voice.transcript, speaker=voice.speaker),
                                 pipeline.settings, tokenizer_encoder(pipeline))
        with self._lock:
            self._segments[key] = profile.segment
        return profile.segment


@dataclass(frozen=True)
class VoiceChoice:
    """How a request's voice speaks: ``label`` (reported in ``X-Voice``), the ``speaker`` id (None: the
    configured one), and the profile: the configured one (``configured``), a cloned voice (``cloned``),
    or none."""

    label: str
    speaker: int | None = None
    configured: bool = True
    cloned: StoredVoice | None = None

    def profile(self, store: VoiceStore, pipeline):
        """The profile for :class:`~csm_serve.synthesis.SpeechSpec` (runs on the worker thread)."""
        if self.cloned is not None:
            return store.segment(self.cloned, pipeline)
        return "configured" if self.configured else None


def voice_name(voice: Any) -> str:
    """The name in a request's ``voice``: a string or ``{"id": name}``; a 400 otherwise."""
    if isinstance(voice, dict):
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice:
        raise bad_request('voice must be a voice name or an object {"id": "<name>"}', param="voice",
                          code="invalid_value")
    return voice


def resolve_voice(voice: Any, store: VoiceStore, options: ServeOptions) -> VoiceChoice:
    """See the module docstring."""
    name = voice_name(voice)
    if name == DEFAULT_VOICE:
        return VoiceChoice(DEFAULT_VOICE)
    if name in OPENAI_VOICES:
        target = options.voice_map.get(name, DEFAULT_VOICE)
        if isinstance(target, int):
            return VoiceChoice(f"{name} (speaker {target})", speaker=target, configured=False)
        if target == DEFAULT_VOICE:
            return VoiceChoice(f"{name} (default)")
        cloned = store.get(target)
        if cloned is None:
            raise bad_request(f"voice {name!r} is mapped to {target!r} by [options.serve] voice_map, which "
                              "does not exist: create it or fix the map", param="voice", code="voice_not_found")
        return VoiceChoice(f"{name} ({target})", speaker=cloned.speaker, configured=False, cloned=cloned)
    cloned = store.get(check_name(name, "voice")) if NAME_PATTERN.fullmatch(name) else None
    if cloned is None:
        names = [DEFAULT_VOICE, *OPENAI_VOICES, *(v.name for v in store.list())]
        raise bad_request(f"voice {name[:80]!r} not found: choose one of {', '.join(names)}", param="voice",
                          code="voice_not_found")
    return VoiceChoice(name, speaker=cloned.speaker, configured=False, cloned=cloned)
