"""Pre-tokenization: every clip encoded once with the audio tokenizer, kept in safetensors shards.

Each usable row becomes an :class:`~csm_train.samples.Utterance`: its audio (resampled to the codec's
rate, cut to ``start``/``end``) encoded by the pipeline's ``tokenizer`` stage (Mimi, on whichever
backend the config names) and its ``[speaker]text`` encoded by the model's text tokenizer.

The cache folder holds ``shard-NNNNN.safetensors`` files (``<key>.codes`` int16 [K,F] and
``<key>.text`` int32 [L] per clip) and ``index.json`` (key -> shard, frames, text tokens). A clip's key
hashes the audio file's bytes, ``start``/``end``, speaker, text and the *fingerprint* of the two
tokenizers (the codes of a fixed probe signal and the ids of a fixed sentence), so a re-run encodes
only what is new or changed, and a different codec or tokenizer never reuses stale codes. Shards are
written every ``shard_size`` new clips (each shard, then the index, atomically), so an interrupted run
keeps what it finished.

Rows that cannot be used are returned as problems, each naming the row: audio that cannot be read or
decoded, a ``start``/``end`` outside the recording, a clip shorter than one codec frame, a clip whose
text + frames + end frame exceed the model's positions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csm_core.audio import Audio, read_audio
from csm_core.errors import AudioError
from csm_core.files import file_sha256, write_atomic

from .manifest import DataError, ManifestRow, Problem
from .samples import Utterance

__all__ = ["Tokenizers", "tokenizer_fingerprint", "pretokenize", "INDEX_FILE"]

INDEX_FILE = "index.json"
INDEX_VERSION = 1
FRAME_RATE = 12.5
LONG_RECORDING_SECONDS = 24 * 3600.0  # a row with start/end may cut a clip out of a long recording
PROBE_TEXT = "[0]The quick brown fox jumps over the lazy dog. 0123456789"


@dataclass
class Tokenizers:
    """What pre-tokenization encodes with: ``encode_audio`` (the tokenizer stage's ``encode``: Audio ->
    codes [K,F]) at ``sample_rate``, ``encode_text`` (text -> ids), and the model's limits."""

    encode_audio: Callable[[Audio], np.ndarray]
    sample_rate: int
    encode_text: Callable[[str], list[int]]
    num_codebooks: int
    max_positions: int


def tokenizer_fingerprint(tokenizers: Tokenizers) -> str:
    """A short hash of what the tokenizers make of a fixed probe: 1 s of deterministic sound and a
    fixed sentence. Two codecs (or text tokenizers) that differ anywhere that matters differ here."""
    rate = tokenizers.sample_rate
    t = np.arange(rate, dtype=np.float64) / rate
    noise = np.random.default_rng(0).standard_normal(rate)
    probe = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1375 * t) + 0.05 * noise).astype(np.float32)
    codes = np.asarray(tokenizers.encode_audio(Audio(probe, rate)), dtype=np.int64)
    ids = np.asarray(tokenizers.encode_text(PROBE_TEXT), dtype=np.int64)
    digest = hashlib.sha256()
    for array in (codes, ids):
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _positions(text_tokens: int, frames: int) -> int:
    return text_tokens + frames + 1


class _Cache:
    """The shard folder: index, reading cached clips, writing new shards."""

    def __init__(self, folder: Path, shard_size: int) -> None:
        self.folder, self.shard_size = folder, shard_size
        folder.mkdir(parents=True, exist_ok=True)
        self.index = self._read_index()
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.pending_meta: dict[str, dict] = {}

    def _read_index(self) -> dict:
        file = self.folder / INDEX_FILE
        if not file.is_file():
            return {"version": INDEX_VERSION, "entries": {}}
        try:
            index = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"pre-tokenized cache index {file} is unreadable ({exc}): delete the folder {self.folder} to rebuild it") from None
        if not isinstance(index, dict) or index.get("version") != INDEX_VERSION or not isinstance(index.get("entries"), dict):
            raise DataError(f"pre-tokenized cache index {file} is not version {INDEX_VERSION}: delete the folder {self.folder} to rebuild it")
        present = {name for name in {e.get("shard") for e in index["entries"].values()} if (self.folder / str(name)).is_file()}
        index["entries"] = {k: e for k, e in index["entries"].items() if e.get("shard") in present}
        return index

    def has(self, key: str) -> bool:
        return key in self.index["entries"] or key in self.pending_meta

    def meta(self, key: str) -> dict:
        return self.pending_meta.get(key) or self.index["entries"][key]

    def add(self, key: str, codes: torch.Tensor, text_ids: torch.Tensor, where: str) -> None:
        self.pending[key] = {"codes": codes.to(torch.int16).contiguous(), "text": text_ids.to(torch.int32).contiguous()}
        self.pending_meta[key] = {"frames": int(codes.shape[1]), "text_tokens": int(len(text_ids)), "where": where}
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write pending clips as a new shard (atomically), then the index."""
        if not self.pending:
            return
        from safetensors.torch import save_file

        taken = {int(p.stem.split("-")[1]) for p in self.folder.glob("shard-*.safetensors") if p.stem.split("-")[1].isdigit()}
        name = f"shard-{max(taken, default=-1) + 1:05d}.safetensors"
        tensors = {f"{key}.{part}": t for key, parts in self.pending.items() for part, t in parts.items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, self.folder / name)
        finally:
            Path(tmp).unlink(missing_ok=True)
        for key, meta in self.pending_meta.items():
            self.index["entries"][key] = {**meta, "shard": name}
        write_atomic(self.folder / INDEX_FILE, json.dumps(self.index, indent=1, sort_keys=True) + "\n")
        self.pending.clear()
        self.pending_meta.clear()

    def load(self, keys: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``key -> (codes [K,F] int64, text ids [L] int64)`` for cached ``keys``."""
        from safetensors import safe_open

        by_shard: dict[str, list[str]] = {}
        for key in keys:
            by_shard.setdefault(self.index["entries"][key]["shard"], []).append(key)
        out = {}
        for shard, shard_keys in by_shard.items():
            try:
                with safe_open(str(self.folder / shard), framework="pt") as handle:
                    for key in shard_keys:
                        out[key] = (handle.get_tensor(f"{key}.codes").long(), handle.get_tensor(f"{key}.text").long())
            except Exception as exc:  # SafetensorError, OSError: a damaged shard
                raise DataError(
                    f"pre-tokenized shard {self.folder / shard} is unreadable ({type(exc).__name__}: {exc}): "
                    f"delete the folder {self.folder} to rebuild it"
                ) from None
        return out


class _AudioReader:
    """Reads rows' audio, keeping the last file decoded (rows cut from one long recording share it)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._last: tuple[Path, Audio] | None = None
        self._hashes: dict[Path, str] = {}

    def sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        return self._hashes[path]

    def clip(self, row: ManifestRow) -> Audio:
        if self._last is None or self._last[0] != row.audio:
            long_ok = row.start is not None or row.end is not None
            audio = read_audio(row.audio, self.sample_rate, f"audio file {str(row.audio)!r}",
                               **({"max_seconds": LONG_RECORDING_SECONDS} if long_ok else {}))
            self._last = (row.audio, audio)
        audio = self._last[1]
        if row.start is None and row.end is None:
            return audio
        duration = audio.duration_s
        start = row.start or 0.0
        end = duration if row.end is None else row.end
        if start >= duration or end > duration + 1e-3:
            raise AudioError(f"start {start} / end {end} s lie outside the recording ({duration:.3f} s long)")
        samples = audio.samples[int(round(start * self.sample_rate)) : int(round(min(end, duration) * self.sample_rate))]
        return Audio(np.ascontiguousarray(samples), self.sample_rate)


def pretokenize(
    rows: Sequence[ManifestRow],
    cache_dir: str | Path,
    tokenizers: Tokenizers,
    *,
    shard_size: int = 256,
    progress: bool = True,
    strict: bool = False,
) -> tuple[list[Utterance], list[Problem], int]:
    """Encode ``rows`` (reusing the cache in ``cache_dir``): (utterances in row order, problems, how many
    clips were encoded now). Under ``strict`` the first problem raises :class:`DataError` instead."""
    from tqdm.auto import tqdm

    cache = _Cache(Path(cache_dir), shard_size)
    fingerprint = tokenizer_fingerprint(tokenizers)
    reader = _AudioReader(tokenizers.sample_rate)
    min_samples = int(tokenizers.sample_rate / FRAME_RATE)
    problems: list[Problem] = []
    kept: list[tuple[ManifestRow, str]] = []
    encoded = 0

    def problem(row: ManifestRow, reason: str) -> None:
        if strict:
            cache.flush()
            raise DataError(f"{row.where}: {reason} (--strict stops at the first bad row; without it the row is skipped and reported)")
        problems.append(Problem(row.where, reason))

    try:
        for row in tqdm(rows, desc="pre-tokenizing", unit="clip", disable=not progress, leave=False):
            try:
                identity = [reader.sha256(row.audio), row.start, row.end, row.speaker, row.text, fingerprint]
            except OSError as exc:
                problem(row, f"audio file {str(row.audio)!r} is unreadable ({exc.strerror or exc})")
                continue
            key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
            if not cache.has(key):
                text_ids = torch.tensor(tokenizers.encode_text(f"[{row.speaker}]{row.text}"), dtype=torch.long)
                try:
                    audio = reader.clip(row)
                except AudioError as exc:
                    problem(row, f"unusable audio: {exc}")
                    continue
                if len(audio.samples) < min_samples:
                    problem(row, f"clip is {audio.duration_s:.3f} s long, shorter than one codec frame ({1 / FRAME_RATE:.2f} s)")
                    continue
                frames = -(-len(audio.samples) // min_samples)
                if _positions(len(text_ids), frames) > tokenizers.max_positions:
                    problem(row, _too_long(len(text_ids), frames, tokenizers.max_positions))
                    continue
                codes = torch.as_tensor(np.asarray(tokenizers.encode_audio(audio)), dtype=torch.long)
                if codes.ndim != 2 or codes.shape[0] != tokenizers.num_codebooks:
                    raise DataError(
                        f"the tokenizer stage gave codes of shape {tuple(codes.shape)} for {row.where}; the model "
                        f"needs [{tokenizers.num_codebooks}, frames]: use the codec that belongs to this model"
                    )
                cache.add(key, codes, text_ids, row.where)
                encoded += 1
            meta = cache.meta(key)
            if _positions(meta["text_tokens"], meta["frames"]) > tokenizers.max_positions:
                problem(row, _too_long(meta["text_tokens"], meta["frames"], tokenizers.max_positions))
                continue
            kept.append((row, key))
    finally:
        cache.flush()
    loaded = cache.load([key for _, key in kept])
    utterances = [Utterance(key, row.where, row.conversation, loaded[key][1], loaded[key][0]) for row, key in kept]
    return utterances, problems, encoded


def _too_long(text_tokens: int, frames: int, max_positions: int) -> str:
    seconds = frames / FRAME_RATE
    return (
        f"clip too long for the context: {text_tokens} text tokens + {frames} frames ({seconds:.1f} s) + 1 end frame "
        f"= {_positions(text_tokens, frames)} positions > the model's {max_positions}; split it (start/end) or shorten it"
    )
