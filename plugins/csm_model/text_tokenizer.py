"""Text tokenizers for CSM: text -> token ids framed by BOS/EOS, the way Sesame's generator frames them.

Sesame's generator loads the Llama-3.2 tokenizer and replaces its post-processor with a template that
puts BOS before and EOS after every text (``<|begin_of_text|> $A <|end_of_text|>``); CSM was trained
on text framed that way. Two tokenizers follow this rule here, both loaded through one path (a
``tokenizer.json`` read by the ``tokenizers`` library):

- :class:`LlamaTextTokenizer` -- any ``tokenizer.json`` (the real Llama-3 one: 128256 ids, BOS 128000,
  EOS 128001), from a checkpoint directory or the Hugging Face cache.
- :class:`ByteTextTokenizer` -- one the project builds itself, so that random-weight presets run
  offline: ids 0..255 are the bytes of the UTF-8 text, then BOS 256, EOS 257, PAD 258 (259 ids in all,
  so it fits any text vocabulary of at least 259 entries). ``save(dir)`` writes a real
  ``tokenizer.json`` that :meth:`LlamaTextTokenizer.from_dir` loads back with identical behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing

__all__ = ["ByteTextTokenizer", "LlamaTextTokenizer", "TextTokenizer", "TextTokenizerError"]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Llama-3's names for the text delimiters; the byte tokenizer uses the same names so that one rule
# finds BOS/EOS in both.
LLAMA3_BOS = "<|begin_of_text|>"
LLAMA3_EOS = "<|end_of_text|>"
BYTE_PAD = "<|pad|>"


class TextTokenizerError(ValueError):
    """A text tokenizer was given input it cannot encode or decode, or a tokenizer file is unusable."""


@runtime_checkable
class TextTokenizer(Protocol):
    """What the generation loop needs from a text tokenizer.

    ``encode`` returns ids framed as ``[bos_id, *text_ids, eos_id]``; every id is below ``vocab_size``,
    which must not exceed the model's text vocabulary.
    """

    bos_id: int
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Non-empty ``text`` -> token ids, BOS first and EOS last."""

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids (each in ``[0, vocab_size)``) -> text, special tokens dropped."""


class LlamaTextTokenizer:
    """A ``tokenizers`` tokenizer with Sesame's BOS/EOS template.

    Built from a ``tokenizers.Tokenizer`` and the *names* of its BOS and EOS tokens; the post-processor
    is replaced by ``bos $A eos`` (as Sesame's ``load_llama3_tokenizer`` does), so ``encode`` frames
    every text. Use :meth:`from_dir` or :meth:`from_file` to load one.
    """

    def __init__(self, tokenizer: Tokenizer, bos_token: str, eos_token: str, source: str = "<memory>"):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_id = _token_id(tokenizer, bos_token, "bos_token", source)
        self.eos_id = _token_id(tokenizer, eos_token, "eos_token", source)
        tokenizer.post_processor = TemplateProcessing(
            single=f"{bos_token}:0 $A:0 {eos_token}:0",
            pair=f"{bos_token}:0 $A:0 {eos_token}:0 {bos_token}:1 $B:1 {eos_token}:1",
            special_tokens=[(bos_token, self.bos_id), (eos_token, self.eos_id)],
        )
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, path: str | Path) -> LlamaTextTokenizer:
        """Load ``tokenizer.json`` from the directory ``path``.

        BOS/EOS names come from ``tokenizer_config.json`` (``bos_token``/``eos_token``) when that file is
        present, else Llama-3's ``<|begin_of_text|>``/``<|end_of_text|>``.
        """
        directory = Path(path)
        file = directory / TOKENIZER_FILE
        if not file.is_file():
            raise TextTokenizerError(
                f"no {TOKENIZER_FILE} in {directory}: a CSM checkpoint directory holds the Llama-3 "
                f"tokenizer there; copy it from meta-llama/Llama-3.2-1B or use a preset's tokenizer"
            )
        bos, eos = LLAMA3_BOS, LLAMA3_EOS
        config_file = directory / TOKENIZER_CONFIG_FILE
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise TextTokenizerError(f"{config_file} is not readable JSON ({exc}); re-download it") from exc
            bos = _token_name(config.get("bos_token"), bos)
            eos = _token_name(config.get("eos_token"), eos)
        return cls.from_file(file, bos_token=bos, eos_token=eos)

    @classmethod
    def from_file(cls, file: str | Path, bos_token: str = LLAMA3_BOS, eos_token: str = LLAMA3_EOS) -> LlamaTextTokenizer:
        """Load a ``tokenizer.json`` file; ``bos_token``/``eos_token`` name its delimiters."""
        file = Path(file)
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise TextTokenizerError(f"{file} is not a valid tokenizer.json ({exc}); re-download it") from exc
        return cls(tokenizer, bos_token, eos_token, source=str(file))

    def encode(self, text: str) -> list[int]:
        """``text`` -> ``[bos_id, *ids, eos_id]``. Raises :class:`TextTokenizerError` for empty text."""
        if not isinstance(text, str):
            raise TextTokenizerError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise TextTokenizerError("text is empty: CSM needs at least one character to speak")
        return self._tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text with BOS/EOS/PAD dropped. Raises for an id outside ``[0, vocab_size)``."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TextTokenizerError(
                f"token ids {bad[:8]} are outside this tokenizer's vocabulary [0, {self.vocab_size}) ({self.source})"
            )
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def check_fits(self, text_vocab_size: int) -> None:
        """Raise unless every id this tokenizer produces is a row of a ``text_vocab_size`` embedding."""
        if self.vocab_size > text_vocab_size:
            raise TextTokenizerError(
                f"tokenizer {self.source} has {self.vocab_size} ids but the model's text vocabulary has "
                f"{text_vocab_size} rows: use the tokenizer that came with the checkpoint"
            )

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``; returns the former."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / TOKENIZER_FILE
        self._tokenizer.save(str(file))
        config = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 131072,
        }
        pad = self._tokenizer.token_to_id(BYTE_PAD)
        if pad is not None:
            config["pad_token"] = BYTE_PAD
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return file

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, source={self.source!r})"


class ByteTextTokenizer(LlamaTextTokenizer):
    """Byte-level tokenizer built in code: id ``b`` is byte ``b`` of the UTF-8 text; BOS 256, EOS 257, PAD 258.

    Implemented as a ``tokenizers`` BPE model with no merges over the 256 byte-level symbols, so that
    :meth:`save` writes an ordinary ``tokenizer.json``.
    """

    NUM_BYTES = 256
    VOCAB_SIZE = NUM_BYTES + 3

    def __init__(self) -> None:
        byte_symbols = pre_tokenizers.ByteLevel.alphabet()
        # ``alphabet()`` is unordered; order the symbols by the byte they stand for (GPT-2's mapping).
        vocab = {symbol: byte for byte, symbol in enumerate(_bytes_to_unicode())}
        assert set(vocab) == set(byte_symbols)
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in (LLAMA3_BOS, LLAMA3_EOS, BYTE_PAD)])
        super().__init__(tokenizer, LLAMA3_BOS, LLAMA3_EOS, source="<byte tokenizer>")
        self.pad_id = _token_id(tokenizer, BYTE_PAD, "pad_token", self.source)
        assert (self.bos_id, self.eos_id, self.pad_id, self.vocab_size) == (256, 257, 258, 259)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character map, as a list indexed by byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _token_id(tokenizer: Tokenizer, token: str, field: str, source: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise TextTokenizerError(f"{field} {token!r} is not in the vocabulary of {source}")
    return token_id


def _token_name(value: object, default: str) -> str:
    """``tokenizer_config.json`` stores special tokens as a string or as ``{"content": ...}``."""
    if value is None:
        return default
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise TextTokenizerError(f"special token entry {value!r} in tokenizer_config.json is not a token string")
    return value
