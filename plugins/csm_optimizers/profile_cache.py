"""The ``profile-cache`` optimizer: an in-process LRU of tokenizer encodings, keyed by content.

It implements ``run_stage`` for the ``tokenizer`` stage (a plain, ``tryfirst`` implementation of the
first-result hook, not a wrapper: on a hit the stage's work must not run at all). The key is the sha256
of the turn's ``input_audio`` (float32 samples and rate) and of everything else that changes the codes
(:func:`csm_core.voice_profile.profile_key` without the file hash: codec identity, tokenizer, backend,
precision). So a clip encoded before — a voice profile on a disk-cache miss (the pipeline encodes it
through ``run_stage`` with the clip as ``input_audio``, see :func:`csm_core.voice_profile.tokenizer_encoder`),
a user's repeated audio, context clips — is not encoded again.

The cache is shared by every pipeline of the process that uses the same ``size`` (a server with many
sessions and one voice profile encodes it once), least recently used entries evicted beyond ``size``
(``[options.profile-cache] size``, default 32). Effect: exact (the codes returned are the codes the
tokenizer returned for the same samples).

Nothing is written to disk, so there is no cached file to verify: entries are kept read-only and handed
out as copies. The disk cache of voice profiles is :mod:`csm_core.voice_profile`'s, checked on load.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from csm_core import hookimpl
from csm_core.config import plugin_options
from csm_core.records import Optimizer, StageContext
from csm_core.voice_profile import profile_key

NAME = "profile-cache"


class ProfileCacheOptions(BaseModel):
    """``[options.profile-cache]``."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(32, ge=1, description="encodings kept in memory (least recently used evicted)")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class LruCache:
    """A thread-safe LRU map of content key -> codes [K, F] (stored read-only, returned as copies)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"LruCache size={size!r}: must be >= 1")
        self.size = size
        self.stats = CacheStats()
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            codes = self._entries.get(key)
            if codes is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return codes.copy()

    def put(self, key: str, codes: np.ndarray) -> None:
        stored = np.array(codes, copy=True)
        stored.setflags(write=False)
        with self._lock:
            self._entries[key] = stored
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
                self.stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.stats = CacheStats()


_SHARED: dict[int, LruCache] = {}
_SHARED_LOCK = threading.Lock()


def shared_cache(size: int) -> LruCache:
    """The process-wide cache of ``size`` entries."""
    with _SHARED_LOCK:
        if size not in _SHARED:
            _SHARED[size] = LruCache(size)
        return _SHARED[size]


class ProfileCache:
    """Answers the ``tokenizer`` stage from the cache when the same samples were encoded before."""

    def __init__(self, context: StageContext):
        options = plugin_options(context.settings, NAME, ProfileCacheOptions)
        self.cache = shared_cache(options.size)
        self._settings = context.settings
        self._codec_key: str | None = None

    def key(self, samples: np.ndarray, sample_rate: int) -> str:
        """sha256 over the codec's identity fields and the samples (as float32) and their rate."""
        if self._codec_key is None:
            fields = {k: v for k, v in profile_key(self._settings, "").items() if k != "audio_sha256"}
            self._codec_key = json.dumps(fields, sort_keys=True)
        digest = hashlib.sha256(self._codec_key.encode())
        digest.update(f"|{int(sample_rate)}|".encode())
        digest.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
        return digest.hexdigest()

    @hookimpl(tryfirst=True)
    def run_stage(self, stage, call, turn):
        audio = getattr(turn, "input_audio", None)
        if stage != "tokenizer" or audio is None:
            return None  # not ours: the next implementation runs the stage
        key = self.key(audio.samples, audio.sample_rate)
        codes = self.cache.get(key)
        if codes is None:
            codes = call()
            self.cache.put(key, codes)
        return codes


OPTIMIZER = Optimizer(
    name=NAME,
    factory=ProfileCache,
    effect="exact",
    description=(
        "in-process LRU ([options.profile-cache] size, default 32) of tokenizer encodings keyed by the "
        "audio's content: voice profiles and repeated clips are encoded once per process"
    ),
)
