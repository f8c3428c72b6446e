"""Random-weight tiny Whisper and chat-LM checkpoints, written with ``save_pretrained``.

They exist so that presets and tests exercise the real loading path (``from_pretrained`` of a
directory with ``config.json``, ``model.safetensors``, a tokenizer and, for Whisper, a feature
extractor) without any download. Their outputs are meaningless: random weights transcribe nothing
and never answer in JSON.

Both tokenizers are byte-level BPE without merges: one token per byte (GPT-2's byte-to-unicode
alphabet, ids 0..255), then the special tokens. Any text round-trips through them.

- Whisper: ``<|endoftext|>``, ``<|startoftranscript|>``, ``<|en|>``, ``<|translate|>``,
  ``<|transcribe|>``, ``<|notimestamps|>``, and a generation config whose ``decoder_start_token_id``,
  ``lang_to_id``, ``task_to_id`` and ``no_timestamps_token_id`` point at them, so
  ``WhisperForConditionalGeneration.generate(language="en", task="transcribe")`` forces the same
  prompt as the real models do.
- Chat LM (``LlamaForCausalLM``): ``<|endoftext|>``, ``<|system|>``, ``<|user|>``, ``<|assistant|>``,
  ``<|end|>``, and a Jinja chat template ``<|role|>\\n{content}<|end|>\\n`` per message.

Weights are drawn under ``torch.manual_seed(seed)``, so the same seed writes the same checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

WHISPER_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|notimestamps|>",
)
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MARKER_FILE = "csm-tiny-model.json"
"""Written last into a finished tiny checkpoint: its kind, seed and format version."""
FORMAT_VERSION = 2


def byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode alphabet: the 256 printable stand-ins for bytes 0..255, id = byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return {chars[byte]: byte for byte in range(256)}


def _with_specials(specials: tuple[str, ...]) -> dict[str, int]:
    vocab = byte_vocab()
    for token in specials:
        vocab[token] = len(vocab)
    return vocab


def whisper_tokenizer():
    """A byte-level :class:`~transformers.WhisperTokenizer` with Whisper's special tokens (ids 256..261)."""
    from transformers import AddedToken, WhisperTokenizer

    vocab = _with_specials(WHISPER_SPECIAL_TOKENS)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in WHISPER_SPECIAL_TOKENS[1:]]}
    )
    return tokenizer


def chat_tokenizer():
    """A byte-level fast tokenizer with chat special tokens and :data:`CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    vocab = _with_specials(CHAT_SPECIAL_TOKENS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHAT_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def write_tiny_whisper(directory: str | Path, seed: int = 0) -> Path:
    """Write a random tiny Whisper (1+1 layers, d_model 32, 80 mel bins) with processor into ``directory``."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    tokenizer = whisper_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIAL_TOKENS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        # Random weights favour whatever token; keep the control tokens out of the text so that a
        # transcript is decoded bytes (as with real Whisper, whose config suppresses tokens too).
        suppress_tokens=[ids[t] for t in WHISPER_SPECIAL_TOKENS[1:]],
        begin_suppress_tokens=[eot],
    )
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    return _save(directory, "whisper", seed, model, processor)


def write_tiny_chat_lm(directory: str | Path, seed: int = 0) -> Path:
    """Write a random tiny ``LlamaForCausalLM`` (2 layers, hidden 32) with a chat tokenizer into ``directory``."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = chat_tokenizer()
    eot, end = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=eot,
        eos_token_id=end,
        pad_token_id=eot,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[end, eot], pad_token_id=eot)
    return _save(directory, "chat-lm", seed, model, tokenizer)


def _save(directory: str | Path, kind: str, seed: int, model, processor) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / MARKER_FILE).write_text(json.dumps({"kind": kind, "seed": seed, "version": FORMAT_VERSION}))
    return directory


def is_complete(directory: Path, kind: str, seed: int) -> bool:
    """Whether ``directory`` holds a finished tiny checkpoint of this kind, seed and format version."""
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"kind": kind, "seed": seed, "version": FORMAT_VERSION}


def ensure_tiny_model(directory: str | Path, kind: str, seed: int = 0) -> Path:
    """The tiny checkpoint ``kind`` ("whisper" or "chat-lm") in ``directory``, written there once.

    Written into a temporary sibling and renamed into place, so a reader never sees half a
    checkpoint and two processes racing both end with a complete one.
    """
    writers = {"whisper": write_tiny_whisper, "chat-lm": write_tiny_chat_lm}
    if kind not in writers:
        raise ValueError(f"kind must be one of {', '.join(writers)}, got {kind!r}")
    directory = Path(directory)
    if is_complete(directory, kind, seed):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        writers[kind](staging, seed=seed)
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        try:
            os.replace(staging, directory)
        except OSError:
            if not is_complete(directory, kind, seed):  # someone else won the race with a complete one?
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
