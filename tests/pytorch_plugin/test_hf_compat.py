"""csm_model.hf_compat on real tiny transformers objects: each adapter gives what the model computes.

These tests hold on every release in the tested range. The installed one exercises one set of names
(``cache`` and ``encoder_cache`` on transformers 5.24); the older names (``past_key_values``,
``encoder_past_key_values``) exist only in older releases, so
:func:`test_the_adapter_on_another_transformers_release` runs this file and the Mimi tests again in a
fresh interpreter on the release found in ``CSM_TEST_TRANSFORMERS_PATH`` (a folder holding it, e.g.
``pip install --no-deps --target /tmp/tf_low transformers==5.21.0``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import Cache, DynamicCache, LlamaConfig, LlamaForCausalLM, MimiConfig, MimiModel

from csm_model.hf_compat import (
    TESTED_TRANSFORMERS,
    TransformersMismatch,
    cache_kwargs,
    mimi_codebooks,
    mimi_decoder_parts,
    mimi_encode_streaming,
    output_cache,
    reset_codebook_caches,
)
from csm_model.mimi import MIMI_PRESETS, random_mimi

FRAME = 1920
ROOT = Path(__file__).resolve().parents[2]
OTHER_RELEASE = os.environ.get("CSM_TEST_TRANSFORMERS_PATH")


@pytest.fixture(scope="module")
def llama():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def mimi():
    return random_mimi("tiny", seed=0)


def pcm(frames: int, seed: int) -> torch.Tensor:
    return 0.3 * torch.randn(1, 1, frames * FRAME, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- causal LM caches
def test_cache_passed_and_read_back_continues_the_sequence(llama):
    """Prefill + one step through the adapter = one forward over all tokens, with no deprecation warning."""
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = llama(input_ids=ids).logits
        cache = DynamicCache(config=llama.config)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the old name warns on releases that renamed it
            first = llama(input_ids=ids[:, :5], use_cache=True, **cache_kwargs(llama, cache))
            returned = output_cache(first)
            second = llama(input_ids=ids[:, 5:], use_cache=True, **cache_kwargs(llama, returned))
    assert isinstance(returned, Cache) and returned is cache  # the model filled the cache it was given
    assert returned.get_seq_length() == 6
    torch.testing.assert_close(second.logits[:, -1], whole[:, -1], rtol=1e-4, atol=1e-5)


def test_a_forward_without_a_cache_argument_is_a_mismatch_naming_the_release():
    encoder = transformers.WhisperModel(transformers.WhisperConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_mel_bins=8, max_source_positions=8, vocab_size=32,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=1,
    )).get_encoder()
    with pytest.raises(TransformersMismatch) as caught:
        cache_kwargs(encoder, DynamicCache())
    message = str(caught.value)
    assert f"transformers {transformers.__version__}" in message
    assert "WhisperEncoder.forward" in message and "cache, past_key_values" in message
    assert f"pip install 'transformers{TESTED_TRANSFORMERS}'" in message


def test_an_output_without_a_cache_field_is_a_mismatch():
    output = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=torch.zeros(1, 1, 2))
    with pytest.raises(TransformersMismatch, match="cache field of BaseModelOutput is none of cache, past_key_values"):
        output_cache(output)


# -------------------------------------------------------------------------------------------- Mimi
def test_streaming_encode_in_chunks_equals_one_encode(mimi):
    audio = pcm(5, seed=2)
    cache = padding = None
    chunks = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for start, n in ((0, 2), (2, 1), (3, 2)):
            codes, cache, padding = mimi_encode_streaming(mimi, audio[..., start * FRAME:(start + n) * FRAME], 32,
                                                          cache, padding)
            assert isinstance(cache, Cache) and padding is not None  # what the next chunk continues from
            chunks.append(codes)
        whole = mimi.encode(audio, num_quantizers=32).audio_codes
    assert torch.equal(torch.cat(chunks, -1), whole)


def test_streaming_encode_on_a_codec_without_it_is_a_mismatch():
    config = transformers.EncodecConfig(num_filters=4, hidden_size=8, codebook_dim=8, codebook_size=16,
                                        num_lstm_layers=1, upsampling_ratios=[2, 2])
    with pytest.raises(TransformersMismatch, match="encoder-cache argument of MimiModel.encode is none of "
                                                   "encoder_cache, encoder_past_key_values"):
        mimi_encode_streaming(transformers.EncodecModel(config).eval(), pcm(1, seed=0), 2, None, None)


def decode_with_parts(model, codes: torch.Tensor) -> torch.Tensor:
    parts = mimi_decoder_parts(model)
    x = model.quantizer.decode(codes)
    if parts.upsample is not None:
        x = parts.upsample(x)
    x = parts.transformer(x.transpose(1, 2)).last_hidden_state.transpose(1, 2)
    for layer in parts.seanet_layers:
        x = layer(x)
    return x


def test_decoder_parts_run_in_order_are_the_decoder(mimi):
    """quantizer -> upsample -> transformer -> SEANet layers reproduces MimiModel.decode."""
    codes = torch.randint(0, 2048, (1, 32, 3), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, reference = decode_with_parts(mimi, codes), mimi.decode(codes).audio_values
    assert ours.shape == reference.shape == (1, 1, 3 * FRAME)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_decoder_parts_of_a_codec_without_upsampling():
    """At a 25 Hz frame rate (24 kHz / 960) Mimi has no upsampling conv: the part is None."""
    model = MimiModel(MimiConfig(**MIMI_PRESETS["tiny"], frame_rate=25.0)).eval()
    parts = mimi_decoder_parts(model)
    assert parts.upsample is None
    assert parts.transformer is not mimi_decoder_parts(random_mimi("tiny")).transformer
    assert len(parts.seanet_layers) == len(mimi_decoder_parts(random_mimi("tiny")).seanet_layers)


def test_codebook_cache_reset_makes_new_centroids_count():
    """Each codebook caches its centroids on first use; after a weight change only a reset uses the new ones."""
    model = random_mimi("tiny", seed=4)
    codebooks = mimi_codebooks(model)
    assert len(codebooks) == model.config.num_quantizers
    audio = pcm(2, seed=5)
    with torch.no_grad():
        before = model.encode(audio, num_quantizers=32).audio_codes
        order = torch.randperm(2048, generator=torch.Generator().manual_seed(6))
        first = codebooks[0]  # codebook 0, the semantic one
        first.embed_sum.copy_(first.embed_sum[order])
        first.cluster_usage.copy_(first.cluster_usage[order])
        stale = model.encode(audio, num_quantizers=32).audio_codes
        reset_codebook_caches(model)
        after = model.encode(audio, num_quantizers=32).audio_codes
    assert torch.equal(stale, before)  # the cached centroids were used
    inverse = torch.argsort(order)
    assert torch.equal(after[:, 0], inverse[before[:, 0]])  # the same centroid, under its new index
    assert torch.equal(after[:, 1:], before[:, 1:])  # same residuals after codebook 0


# --------------------------------------------------------------------------------- declared range
def test_pyproject_declares_the_tested_range():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"transformers{TESTED_TRANSFORMERS}" in extras["torch"]


def test_installed_transformers_is_in_the_tested_range():
    from packaging.specifiers import SpecifierSet

    assert transformers.__version__ in SpecifierSet(TESTED_TRANSFORMERS)


@pytest.mark.slow  # two test files in a fresh interpreter: ~15 s on 2 busy cores
@pytest.mark.skipif(not OTHER_RELEASE, reason="CSM_TEST_TRANSFORMERS_PATH names no folder with another transformers")
def test_the_adapter_on_another_transformers_release():
    env = {k: v for k, v in os.environ.items() if k != "CSM_TEST_TRANSFORMERS_PATH"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [OTHER_RELEASE, env.get("PYTHONPATH")]))
    version = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert version != transformers.__version__, f"{OTHER_RELEASE} holds the installed transformers {version}"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::FutureWarning",
         str(ROOT / "tests/pytorch_plugin/test_hf_compat.py"), str(ROOT / "tests/pytorch_plugin/test_mimi.py")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"on transformers {version}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout and " failed" not in done.stdout
