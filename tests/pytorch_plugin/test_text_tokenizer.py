"""The text tokenizers: Sesame's BOS/EOS framing, the byte tokenizer, one loading path for both."""

from __future__ import annotations

import json

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from csm_model.text_tokenizer import (
    ByteTextTokenizer,
    LlamaTextTokenizer,
    TextTokenizer,
    TextTokenizerError,
)

TEXTS = ["[0]Hello there.", "héllo wörld", "emoji 👋🏽 and CJK 你好", " leading and trailing spaces ", "a"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_ids_are_the_utf8_bytes_framed_by_bos_eos(text):
    tok = ByteTextTokenizer()
    assert tok.encode(text) == [256, *text.encode("utf-8"), 257]
    assert tok.decode(tok.encode(text)) == text


def test_byte_tokenizer_vocabulary_and_protocol():
    tok = ByteTextTokenizer()
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (256, 257, 258, 259)
    assert isinstance(tok, TextTokenizer)
    tok.check_fits(259)
    tok.check_fits(128_256)
    with pytest.raises(TextTokenizerError, match="259 ids.*258 rows"):
        tok.check_fits(258)


def test_saved_byte_tokenizer_loads_back_through_the_llama_path(tmp_path):
    tok = ByteTextTokenizer()
    file = tok.save(tmp_path)
    assert file == tmp_path / "tokenizer.json"
    loaded = LlamaTextTokenizer.from_dir(tmp_path)
    assert type(loaded) is LlamaTextTokenizer
    assert (loaded.bos_id, loaded.eos_id, loaded.vocab_size) == (tok.bos_id, tok.eos_id, tok.vocab_size)
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text


def test_saved_byte_tokenizer_is_a_plain_tokenizers_and_transformers_file(tmp_path):
    ByteTextTokenizer().save(tmp_path)
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert raw.encode("ab").ids == [256, 97, 98, 257]
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf("ab")["input_ids"] == [256, 97, 98, 257]
    assert (hf.bos_token_id, hf.eos_token_id) == (256, 257)


def _llama_like_tokenizer_json(directory, bos="<|begin_of_text|>", eos="<|end_of_text|>", config=None):
    """A word-level tokenizer.json whose own post-processor adds BOS only (as Llama 3's does)."""
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "[0]": 3}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(bos, special=True), AddedToken(eos, special=True)])
    tok.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 4)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def test_llama_tokenizer_frames_text_with_bos_and_eos_like_sesame(tmp_path):
    raw = _llama_like_tokenizer_json(tmp_path)
    assert raw.encode("hello world").ids == [4, 1, 2]  # the file's own template adds BOS only
    tok = LlamaTextTokenizer.from_dir(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (4, 5, 6)
    assert tok.encode("hello world") == [4, 1, 2, 5]
    assert tok.decode([4, 1, 2, 5]) == "hello world"


def test_llama_tokenizer_takes_bos_eos_names_from_tokenizer_config(tmp_path):
    _llama_like_tokenizer_json(
        tmp_path, bos="<s>", eos="</s>", config={"bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    )
    tok = LlamaTextTokenizer.from_dir(tmp_path)
    assert tok.encode("world") == [4, 2, 5]


def test_errors_for_bad_text_and_ids():
    tok = ByteTextTokenizer()
    with pytest.raises(TextTokenizerError, match="empty"):
        tok.encode("")
    with pytest.raises(TextTokenizerError, match="must be a str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TextTokenizerError, match=r"\[259\].*\[0, 259\)"):
        tok.decode([97, 259])
    with pytest.raises(TextTokenizerError, match=r"\[-1\]"):
        tok.decode([-1])


def test_errors_for_bad_tokenizer_files(tmp_path):
    with pytest.raises(TextTokenizerError, match="no tokenizer.json in"):
        LlamaTextTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    with pytest.raises(TextTokenizerError, match="not a valid tokenizer.json.*re-download"):
        LlamaTextTokenizer.from_dir(tmp_path)
    other = tmp_path / "other"
    _llama_like_tokenizer_json(other, bos="<s>", eos="</s>")  # no tokenizer_config.json: Llama-3 names assumed
    with pytest.raises(TextTokenizerError, match="bos_token '<\\|begin_of_text\\|>' is not in the vocabulary"):
        LlamaTextTokenizer.from_dir(other)
