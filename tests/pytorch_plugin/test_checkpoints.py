"""Checkpoints on disk: every preset round-trips through every layout; discovery order; every bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from csm_model.checkpoints import (
    CheckpointError,
    CheckpointNotFound,
    CorruptCheckpoint,
    UnknownLayout,
    WeightMismatch,
    detect_layout,
    find_checkpoint,
    hf_hub_cache_dir,
    load_checkpoint,
)
from csm_model.model import Csm
from csm_model.presets import SAVE_LAYOUTS, build_preset, get_preset, save_preset
from csm_model.text_tokenizer import ByteTextTokenizer, LlamaTextTokenizer

SEED = 7


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """The tiny preset (seed 7) saved once in each layout; tests that damage files work on copies."""
    root = tmp_path_factory.mktemp("tiny")
    return {layout: save_preset("tiny", root / layout, layout, seed=SEED) for layout in SAVE_LAYOUTS}


@pytest.fixture
def copy_of(tiny_dirs, tmp_path):
    def copy(layout: str) -> Path:
        return Path(shutil.copytree(tiny_dirs[layout], tmp_path / layout))

    return copy


def _assert_same_model(loaded: Csm, reference: Csm) -> None:
    """Identical weights, and identical outputs of one backbone and one decoder forward."""
    ref_state, got_state = reference.state_dict(), loaded.state_dict()
    assert list(got_state) == list(ref_state)
    for name, tensor in ref_state.items():
        assert torch.equal(got_state[name], tensor), name
    gen = torch.Generator().manual_seed(0)
    d = reference.args.backbone_dim
    embeds, x = torch.randn(1, 5, d, generator=gen), torch.randn(1, 2, d, generator=gen)
    outputs = []
    for model in (reference, loaded):
        model.setup_caches(1)
        with torch.inference_mode():
            hidden, c0 = model.backbone_logits(embeds, torch.arange(5)[None])
            c1 = model.decoder_logits(x, torch.tensor([[0, 1]]))
        outputs.append((hidden, c0, c1))
    for ref, got in zip(*outputs):
        assert torch.equal(ref, got)


def _check_round_trip(directory: Path, name: str, layout: str) -> None:
    assert detect_layout(directory) == layout
    loaded = load_checkpoint(directory)
    reference, tokenizer = build_preset(name, seed=SEED)
    assert (loaded.layout, loaded.args, loaded.source) == (layout, get_preset(name).args, directory)
    assert loaded.tokenizer.encode("[1]Hi!") == tokenizer.encode("[1]Hi!")
    _assert_same_model(loaded.model, reference)


@pytest.mark.parametrize("layout", SAVE_LAYOUTS)
def test_tiny_preset_round_trips_through_every_layout(tiny_dirs, layout):
    _check_round_trip(tiny_dirs[layout], "tiny", layout)


@pytest.mark.slow
@pytest.mark.parametrize("layout", SAVE_LAYOUTS)
def test_small_preset_round_trips_through_every_layout(tmp_path, layout):
    _check_round_trip(save_preset("small", tmp_path, layout, seed=SEED), "small", layout)


def test_files_of_each_layout(tiny_dirs):
    names = {layout: sorted(p.name for p in d.iterdir()) for layout, d in tiny_dirs.items()}
    tokenizer_files = ["tokenizer.json", "tokenizer_config.json"]
    assert names["transformers"] == sorted(["config.json", "generation_config.json", "model.safetensors", *tokenizer_files])
    assert names["sesame"] == sorted(["config.json", "model.safetensors", *tokenizer_files])
    assert names["sesame-ckpt"] == sorted(["config.json", "ckpt.pt", *tokenizer_files])
    hf_config = json.loads((tiny_dirs["transformers"] / "config.json").read_text())
    assert hf_config["model_type"] == "csm"
    assert hf_config["depth_decoder_config"]["hidden_size"] == 32
    assert hf_config["codec_config"]["model_type"] == "mimi"
    sesame_config = json.loads((tiny_dirs["sesame"] / "config.json").read_text())
    assert sesame_config["backbone_flavor"] == "csm-multi-tiny-backbone"
    assert sesame_config["decoder_flavor"] == "csm-multi-tiny-decoder"
    assert (sesame_config["text_vocab_size"], sesame_config["audio_vocab_size"], sesame_config["audio_num_codebooks"]) == (
        259, 2051, 32,
    )
    stored = load_file(str(tiny_dirs["sesame"] / "model.safetensors"))
    assert "backbone.layers.0.sa_norm.scale" in stored and "backbone.layers.0.attn.output_proj.weight" in stored


def test_transformers_layout_loads_in_transformers_itself(tiny_dirs):
    from transformers import CsmForConditionalGeneration

    hf, info = CsmForConditionalGeneration.from_pretrained(tiny_dirs["transformers"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours, _ = build_preset("tiny", seed=SEED)
    assert torch.equal(hf.embed_text_tokens.weight, ours.text_embeddings.weight)
    assert torch.equal(hf.backbone_model.embed_tokens.embed_audio_tokens.weight, ours.audio_embeddings.weight)
    assert torch.equal(hf.depth_decoder.model.embed_tokens.weight, ours.audio_embeddings.weight)
    assert torch.equal(hf.lm_head.weight, ours.codebook0_head.weight)
    assert torch.equal(hf.depth_decoder.codebooks_head.weight, ours.audio_head)
    assert torch.equal(hf.backbone_model.layers[1].mlp.down_proj.weight, ours.backbone.layers[1].mlp.down_proj.weight)


def test_sharded_transformers_checkpoint_loads(tiny_dirs, tmp_path):
    from transformers import CsmForConditionalGeneration

    hf = CsmForConditionalGeneration.from_pretrained(tiny_dirs["transformers"])
    hf.save_pretrained(tmp_path, max_shard_size="4MB")
    ByteTextTokenizer().save(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = load_checkpoint(tmp_path)
    _assert_same_model(loaded.model, build_preset("tiny", seed=SEED)[0])


@pytest.mark.parametrize("layout, file", [("sesame", "model.safetensors"), ("sesame-ckpt", "ckpt.pt")])
def test_a_weights_file_may_be_named_instead_of_its_directory(tiny_dirs, layout, file):
    path = tiny_dirs[layout] / file
    assert detect_layout(path) == layout
    assert find_checkpoint(model_path=path) == path
    _assert_same_model(load_checkpoint(path).model, build_preset("tiny", seed=SEED)[0])


def test_dtype_and_device_are_applied(tiny_dirs):
    loaded = load_checkpoint(tiny_dirs["sesame"], device="cpu", dtype=torch.bfloat16)
    reference = build_preset("tiny", seed=SEED)[0]
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.model.audio_head, reference.audio_head.to(torch.bfloat16))
    assert not loaded.model.training


# ----------------------------------------------------------------------------------------- discovery


def _fake_hf_cache(cache: Path, repo_id: str, files: dict[str, Path], revision: str, main: bool = True) -> Path:
    """A Hugging Face hub cache entry as huggingface_hub lays it out: blobs, snapshot symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / blob.name)
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def _cache_with_tiny(cache: Path, tiny_dirs, revision="a" * 40, main=True) -> Path:
    source = tiny_dirs["transformers"]
    return _fake_hf_cache(cache, "sesame/csm-1b", {p.name: p for p in source.iterdir()}, revision, main)


def test_discovery_order_model_path_then_model_dir_then_hf_cache(tiny_dirs, tmp_path):
    cache = tmp_path / "hub"
    snapshot = _cache_with_tiny(cache, tiny_dirs)
    model_dir = tiny_dirs["sesame"]
    explicit = tiny_dirs["sesame-ckpt"]
    assert find_checkpoint(model_path=explicit, model_dir=model_dir, hf_cache=cache) == explicit
    assert find_checkpoint(model_dir=model_dir, hf_cache=cache) == model_dir
    assert find_checkpoint(model_dir=tmp_path / "empty", hf_cache=cache) == snapshot
    assert find_checkpoint(hf_cache=cache) == snapshot
    loaded = load_checkpoint(snapshot)  # symlinked blobs load like plain files
    assert loaded.layout == "transformers"


def test_model_dir_may_hold_the_checkpoint_in_a_folder_named_for_the_repo(tiny_dirs, tmp_path):
    shutil.copytree(tiny_dirs["sesame"], tmp_path / "models" / "csm-1b")
    shutil.copytree(tiny_dirs["sesame"], tmp_path / "models2" / "sesame" / "csm-1b")
    assert find_checkpoint(model_dir=tmp_path / "models", hf_cache=tmp_path) == tmp_path / "models" / "csm-1b"
    assert find_checkpoint(model_dir=tmp_path / "models2", hf_cache=tmp_path) == tmp_path / "models2" / "sesame" / "csm-1b"


def test_hf_cache_follows_refs_main_then_takes_any_snapshot(tiny_dirs, tmp_path):
    cache = tmp_path / "hub"
    old = _fake_hf_cache(cache, "sesame/csm-1b", {"config.json": tiny_dirs["sesame"] / "config.json"}, "b" * 40, main=False)
    main = _cache_with_tiny(cache, tiny_dirs, revision="c" * 40)
    assert old.is_dir()
    assert find_checkpoint(hf_cache=cache) == main  # refs/main names the snapshot with weights
    (cache / "models--sesame--csm-1b" / "refs" / "main").unlink()
    assert find_checkpoint(hf_cache=cache) == main  # the only snapshot holding weights


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hf_cache_location_comes_from_the_environment(tiny_dirs, tmp_path, monkeypatch, variable):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "hub" if variable == "HF_HUB_CACHE" else tmp_path / "home" / "hub"
    monkeypatch.setenv(variable, str(cache if variable == "HF_HUB_CACHE" else cache.parent))
    assert hf_hub_cache_dir() == cache
    snapshot = _cache_with_tiny(cache, tiny_dirs)
    assert find_checkpoint() == snapshot


def test_missing_checkpoint_lists_every_place_and_how_to_get_weights(tmp_path):
    with pytest.raises(CheckpointNotFound) as caught:
        find_checkpoint(model_dir=tmp_path / "models", hf_cache=tmp_path / "hub")
    message = str(caught.value)
    for place in (tmp_path / "models", tmp_path / "models" / "csm-1b", tmp_path / "hub" / "models--sesame--csm-1b"):
        assert str(place) in message
    assert len(caught.value.looked_at) == 4
    assert "huggingface-cli download sesame/csm-1b" in message and "--preset tiny" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_an_explicit_model_path_that_is_wrong_never_falls_through(tiny_dirs, tmp_path):
    cache = tmp_path / "hub"
    _cache_with_tiny(cache, tiny_dirs)
    with pytest.raises(CheckpointNotFound, match="model path .*nope does not exist"):
        find_checkpoint(model_path=tmp_path / "nope", hf_cache=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound, match="empty holds none of model.safetensors"):
        find_checkpoint(model_path=tmp_path / "empty", hf_cache=cache)


# ----------------------------------------------------------------------------------------- bad input


def test_config_of_another_model_is_an_unknown_layout(copy_of):
    directory = copy_of("transformers")
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(UnknownLayout, match=r"config.json describes a 'llama' model, not CSM"):
        detect_layout(directory)


def test_config_with_unknown_keys_is_an_unknown_layout(copy_of):
    directory = copy_of("sesame")
    (directory / "config.json").write_text(json.dumps({"flavor": "llama-1B"}))
    with pytest.raises(UnknownLayout, match=r"config.json is neither .*keys are \['flavor'\]"):
        load_checkpoint(directory)


def test_unknown_sesame_flavor_names_the_config(copy_of):
    directory = copy_of("sesame")
    config = json.loads((directory / "config.json").read_text())
    del config["csm_multi_args"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownLayout, match=r"config.json is not a usable sesame CSM config: .*backbone_flavor='csm-multi-tiny-backbone' is unknown"):
        load_checkpoint(directory)


def test_safetensors_without_config_cannot_be_placed(copy_of):
    directory = copy_of("sesame")
    (directory / "config.json").unlink()
    with pytest.raises(UnknownLayout, match="no config.json"):
        load_checkpoint(directory)


def test_directory_without_weights(copy_of):
    directory = copy_of("sesame")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights in .*sesame: expected model.safetensors.*config.json"):
        load_checkpoint(directory)


def _rewrite_tensors(file: Path, change) -> None:
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_wrong_shape_names_the_tensor_and_both_shapes(copy_of):
    directory = copy_of("transformers")
    file = directory / "model.safetensors"
    _rewrite_tensors(file, lambda t: t.update({"lm_head.weight": torch.zeros(2051, 65)}))
    with pytest.raises(WeightMismatch, match=r"(?s)model.safetensors does not match.*lm_head.weight expected \(2051, 64\), found \(2051, 65\)"):
        load_checkpoint(directory)


def test_missing_tensor_is_named(copy_of):
    directory = copy_of("sesame")
    _rewrite_tensors(directory / "model.safetensors", lambda t: t.pop("decoder.layers.1.mlp.w2.weight"))
    with pytest.raises(WeightMismatch, match=r"1 tensors missing: decoder.layers.1.mlp.w2.weight"):
        load_checkpoint(directory)


def test_config_that_does_not_match_the_weights(copy_of):
    directory = copy_of("sesame")
    config = json.loads((directory / "config.json").read_text())
    config["csm_multi_args"]["backbone_mlp_dim"] = 96
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightMismatch, match=r"backbone.layers.0.mlp.w1.weight expected \(96, 64\), found \(128, 64\)"):
        load_checkpoint(directory)


def test_ckpt_without_config_is_taken_for_csm_1b(copy_of):
    directory = copy_of("sesame-ckpt")
    (directory / "config.json").unlink()
    with pytest.raises(WeightMismatch, match=r"(?s)ckpt.pt does not match.*CSM-1B's dimensions were assumed") as caught:
        load_checkpoint(directory)
    message = str(caught.value)
    assert "144 tensors missing" in message  # (16 - 2) + (4 - 2) layers of 9 tensors and "... (" in message and len(message) < 3000
    assert "audio_embeddings.weight expected (65632, 2048), found (65632, 64)" in message


@pytest.mark.parametrize("layout", ["transformers", "sesame"])
def test_truncated_safetensors_says_re_download(copy_of, layout):
    file = copy_of(layout) / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match=rf"{file}.* truncated or corrupt.*re-download"):
        load_checkpoint(file.parent)


def test_garbage_safetensors_says_re_download(copy_of):
    file = copy_of("sesame") / "model.safetensors"
    file.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(CorruptCheckpoint, match="re-download"):
        load_checkpoint(file.parent)


def test_truncated_ckpt_says_re_download(copy_of):
    file = copy_of("sesame-ckpt") / "ckpt.pt"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpoint, match=r"ckpt.pt is truncated or corrupt.*re-download"):
        load_checkpoint(file.parent)


class NotATensor:
    """Something torch.save pickles but weights_only loading refuses."""


def test_ckpt_with_arbitrary_objects_is_refused(copy_of):
    file = copy_of("sesame-ckpt") / "ckpt.pt"
    torch.save({"model": NotATensor()}, file)
    with pytest.raises(CorruptCheckpoint, match=r"ckpt.pt holds objects other than tensors.*weights_only=True"):
        load_checkpoint(file.parent)


def test_shard_missing_from_an_index(copy_of):
    directory = copy_of("transformers")
    (directory / "model.safetensors").rename(directory / "model-00001-of-00002.safetensors")
    tensors = load_file(str(directory / "model-00001-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00002.safetensors" for name in tensors}}
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002.safetensors is missing; re-download"):
        load_checkpoint(directory)


def test_sesame_layout_without_tokenizer_borrows_the_cached_llama_tokenizer(copy_of, tmp_path):
    directory = copy_of("sesame")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    cache = tmp_path / "hub"
    with pytest.raises(CheckpointError, match=r"no text tokenizer: .*huggingface-cli download meta-llama/Llama-3.2-1B"):
        load_checkpoint(directory, hf_cache=cache)
    saved = tmp_path / "llama"
    ByteTextTokenizer().save(saved)  # stands in for Llama-3.2's tokenizer.json (same BOS/EOS names)
    snapshot = _fake_hf_cache(cache, "meta-llama/Llama-3.2-1B", {"tokenizer.json": saved / "tokenizer.json"}, "d" * 40)
    loaded = load_checkpoint(directory, hf_cache=cache)
    assert isinstance(loaded.tokenizer, LlamaTextTokenizer)
    assert loaded.tokenizer.source == str(snapshot / "tokenizer.json")
    assert loaded.tokenizer.encode("a") == [256, 97, 257]


def test_tokenizer_larger_than_the_text_vocabulary(copy_of):
    from tokenizers import AddedToken, Tokenizer, models

    directory = copy_of("sesame")
    vocab = {f"w{i}": i for i in range(300)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.add_special_tokens([AddedToken("<|begin_of_text|>", special=True), AddedToken("<|end_of_text|>", special=True)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has 302 ids but the model's text vocabulary has 259 rows"):
        load_checkpoint(directory)
