"""The voice profile: a reference clip and its transcript, as a pinned CSM context segment.

The clip (``voice.audio``, any WAV/FLAC at any rate) is read, resampled to 24 kHz and encoded once
with the pipeline's tokenizer stage into Mimi codes [K, F]. The codes are cached on disk under
``<cache_dir>/profiles/<key>.json``, where ``<key>`` is the sha256 of everything that changes the codes:

- ``audio_sha256``: the sha256 of the clip file's bytes (a hit needs no decoding);
- ``codec``: the codec's identity (:func:`codec_identity`: the preset name, or the weights' sha256);
- ``tokenizer`` / ``backend`` / ``precision``: the tokenizer stage implementation, its backend and the
  codec's precision (a backend may round differently);
- ``sample_rate``: the rate the clip is resampled to before encoding (24 kHz).

The transcript and speaker id are not part of the key (they do not change the codes). An entry is
written atomically with a checksum file beside it (``<key>.json.sha256``, :mod:`csm_core.artifact_check`)
and holds its key, so an entry that is truncated, changed, without its checksum file or with a wrong one,
or made for another key is detected, reported, and encoded again: a damaged entry is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from csm_core.artifact_check import checksum_path, read_verified, store
from csm_core.audio import MIMI_SAMPLE_RATE, Audio, read_audio
from csm_core.errors import CsmError
from csm_core.files import file_sha256
from csm_core.stages import Segment
from csm_core.turn import Turn

if TYPE_CHECKING:
    from csm_core.config import Settings, VoiceSettings

log = logging.getLogger("csm.voice")

ENTRY_FORMAT = "csm-multi-voice-profile"
ENTRY_VERSION = 1

Encode = Callable[[Audio], np.ndarray]
"""Audio (24 kHz) -> Mimi codes [K, F] int: the pipeline's tokenizer stage (see :func:`tokenizer_encoder`)."""


@dataclass(frozen=True)
class VoiceReference:
    """Which clip a profile was made from — its path and the sha256 of its bytes, not the audio — with
    its transcript and speaker id (``None``: the reply speaker), enough to rebuild the profile."""

    path: Path
    sha256: str
    text: str
    speaker: int | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "text": self.text, "speaker": self.speaker}

    @classmethod
    def from_dict(cls, data: dict) -> "VoiceReference":
        sha = str(data["sha256"])
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"voice sha256 {sha!r} is not a hex sha256")
        speaker = data.get("speaker")
        return cls(Path(str(data["path"])), sha, str(data["text"]), None if speaker is None else int(speaker))

    @classmethod
    def of(cls, voice: "VoiceSettings") -> "VoiceReference":
        """The reference of a configured voice (hashes the clip); CsmError when the clip is missing."""
        if voice.audio is None or voice.text is None:
            raise CsmError("a voice reference needs voice.audio and voice.text; set both in the [voice] table")
        path = Path(voice.audio).expanduser()
        if not path.is_file():
            raise CsmError(f"voice.audio {str(path)!r} does not exist or is not a file: give the reference clip")
        return cls(path, file_sha256(path), voice.text, voice.speaker)


@dataclass(frozen=True)
class EncodedProfile:
    """A voice profile ready for CSM: the context ``segment``, where it came from, and whether the codes
    were read from the cache (``from_cache``) or encoded now."""

    segment: Segment
    reference: VoiceReference
    entry: Path
    from_cache: bool


_WEIGHTS_HASHES: dict[tuple[str, int, int], str] = {}


def _weights_sha256(path: Path) -> str:
    """sha256 of a weights file, or of a directory's ``*.safetensors``/``*.pt``/``*.bin`` files in name order.

    Memoized per (path, size, mtime) for the process: hashing a large checkpoint takes seconds.
    """
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".pt", ".bin")) if path.is_dir() else [path]
    if not files:
        raise CsmError(f"models.mimi_path {str(path)!r} holds no weights file (*.safetensors, *.pt, *.bin)")
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        memo = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in _WEIGHTS_HASHES:
            _WEIGHTS_HASHES[memo] = file_sha256(file)
        digest.update(f"{file.name}:{_WEIGHTS_HASHES[memo]}\n".encode())
    return digest.hexdigest()


def codec_identity(settings: "Settings") -> str:
    """What identifies the codec's weights: ``preset:<name>`` for random presets (fixed seed),
    ``sha256:<hex>`` of ``models.mimi_path``'s weights, else the sources it is looked up from
    (``source:...``: a checkpoint's embedded codec or the Hugging Face cache, by path and repo id)."""
    models = settings.models
    if models.preset:
        return f"preset:{models.preset}"
    if models.mimi_path is not None:
        path = Path(models.mimi_path).expanduser()
        if not path.exists():
            raise CsmError(f"models.mimi_path {str(path)!r} does not exist: point it at the Mimi weights")
        return f"sha256:{_weights_sha256(path)}"
    parts = [models.model_path, models.model_dir, models.repo_id, models.mimi_repo_id]
    return "source:" + "|".join("" if p is None else str(p) for p in parts)


def profile_key(settings: "Settings", audio_sha256: str) -> dict[str, Any]:
    """The fields that decide a profile's codes (see the module docstring)."""
    return {
        "audio_sha256": audio_sha256,
        "codec": codec_identity(settings),
        "tokenizer": settings.stages.tokenizer,
        "backend": settings.backend_for("tokenizer"),
        "precision": settings.precision_of("codec"),
        "sample_rate": MIMI_SAMPLE_RATE,
    }


def entry_path(settings: "Settings", key: dict[str, Any]) -> Path:
    """``<cache_dir>/profiles/<sha256 of the key>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return settings.resolved_cache_dir() / "profiles" / f"{digest}.json"


def _read_entry(path: Path, key: dict[str, Any]) -> np.ndarray:
    """The codes [K, F] of a cache entry; ValueError saying what is wrong with it otherwise (its checksum
    first: :class:`~csm_core.artifact_check.ArtifactMismatch` is a ValueError)."""
    data = read_verified(path)
    try:
        payload = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"unreadable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != ENTRY_FORMAT:
        raise ValueError("not a voice-profile entry")
    if payload.get("version") != ENTRY_VERSION:
        raise ValueError(f"version {payload.get('version')!r}, this csm-multi writes {ENTRY_VERSION}")
    if payload.get("key") != key:
        raise ValueError(f"its key {payload.get('key')!r} does not match {key!r}")
    try:
        codes = np.asarray(payload["codes"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"malformed codes ({exc})") from None
    if codes.ndim != 2 or codes.size == 0 or list(codes.shape) != [payload.get("num_codebooks"), payload.get("frames")]:
        raise ValueError(f"codes of shape {codes.shape} do not match the recorded [num_codebooks, frames]")
    return codes


def _write_entry(path: Path, key: dict[str, Any], codes: np.ndarray) -> None:
    payload = {
        "format": ENTRY_FORMAT, "version": ENTRY_VERSION, "key": key,
        "num_codebooks": int(codes.shape[0]), "frames": int(codes.shape[1]),
        "codes": codes.astype(np.int64).tolist(),
    }
    store(path, json.dumps(payload).encode("utf-8"))


def _checked_codes(codes: Any, audio_path: Path) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.size == 0 or not np.issubdtype(codes.dtype, np.integer):
        raise CsmError(
            f"the tokenizer stage returned {codes.dtype} codes of shape {codes.shape} for voice.audio "
            f"{str(audio_path)!r}; a tokenizer must return integer codes [K, F]"
        )
    return codes.astype(np.int64, copy=False)


def encode_profile(
    voice: "VoiceSettings",
    settings: "Settings",
    encode: Encode,
    report: Callable[[str], None] | None = None,
) -> EncodedProfile:
    """The profile segment of ``voice`` (which must have ``audio`` and ``text``), from the disk cache or
    encoded now with ``encode`` and cached. ``report`` receives notable events (a rebuilt entry)."""
    report = report or log.warning
    reference = VoiceReference.of(voice)
    audio_path = reference.path
    key = profile_key(settings, reference.sha256)
    path = entry_path(settings, key)
    speaker = settings.speaker if voice.speaker is None else voice.speaker
    codes = None
    if path.exists() or checksum_path(path).exists():
        try:
            codes = _read_entry(path, key)
        except ValueError as reason:
            report(f"voice profile cache entry {str(path)!r} cannot be used ({reason}): "
                   f"encoding {str(audio_path)!r} again")
    from_cache = codes is not None
    if codes is None:
        codes = _checked_codes(encode(read_audio(audio_path, MIMI_SAMPLE_RATE)), audio_path)
        try:
            _write_entry(path, key, codes)
        except OSError as exc:
            raise CsmError(
                f"cannot write the voice profile cache entry {str(path)!r} ({exc}): make cache_dir "
                f"{str(settings.resolved_cache_dir())!r} writable, or set cache_dir to a writable folder"
            ) from None
        log.info("voice profile %s encoded (%d frames) and cached in %s", audio_path, codes.shape[1], path)
    return EncodedProfile(Segment(speaker, voice.text, codes), reference, path, from_cache)


def profile_segment(settings: "Settings", encode: Encode, report: Callable[[str], None] | None = None) -> Segment | None:
    """The voice profile's context segment, or None when ``settings.voice`` names no clip.

    This is what the pipeline calls (once per pipeline; the result does not change while it lives).
    """
    if settings.voice.audio is None:
        return None
    return encode_profile(settings.voice, settings, encode, report).segment


def tokenizer_encoder(pipeline: Any) -> Encode:
    """An :data:`Encode` that runs ``pipeline``'s tokenizer stage through the ``run_stage`` hook (so
    wrapper plugins, optimizers among them, see it), on a turn of its own whose
    ``input_audio`` is the clip."""
    def encode(audio: Audio) -> np.ndarray:
        stage = pipeline.stage("tokenizer")
        turn = Turn(input_audio=audio)
        return pipeline.plugins.hook.run_stage(stage="tokenizer", call=lambda: stage.encode(audio), turn=turn)

    return encode
