"""The one place that reads transformers' non-public or release-dependent fields.

transformers renames arguments and output fields and moves sub-modules between releases, and an
unknown keyword argument often vanishes into ``**kwargs`` without an error (5.24 renamed Mimi's
``encoder_past_key_values`` to ``encoder_cache``: the old name was ignored and the output field was
gone). Code in csm-multi that needs such a field goes through this module (a shared layer: other
plugins may import it). Each function finds the name by what the installed objects offer (a
parameter in a signature, a field of an output dataclass, a sub-module), never by comparing version
strings, and raises :class:`TransformersMismatch` naming the installed release and the tested range
when it finds none of the names it knows.

What differs across the tested range (:data:`TESTED_TRANSFORMERS`):

- a model's cache argument and output field: ``cache`` (5.24) / ``past_key_values`` (5.21 - 5.23);
- Mimi's streaming encode: ``encoder_cache`` (5.24) / ``encoder_past_key_values`` (5.21 - 5.23),
  the same name as argument of ``MimiModel.encode`` and as field of its output;
- unchanged but private: each Mimi codebook's centroid cache ``MimiEuclideanCodebook._embed``, and
  where Mimi's decoder parts live: ``model.decoder.{upsample, decoder_transformer, decoder_seanet}``
  (``MimiDecoderModel``). Releases before 5.21 keep them side by side on ``MimiModel`` (SEANet decoder as
  ``model.decoder``); that layout is read too (checked with 5.17, the GPU image's release), but those
  releases are below the range: their ``CsmForConditionalGeneration`` leaves its two audio embedding
  tables untied, so transformers' own CSM (the parity reference) is wrong there.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, NamedTuple

from csm_core.errors import CsmError

__all__ = [
    "TESTED_TRANSFORMERS",
    "MimiDecoderParts",
    "TransformersMismatch",
    "cache_kwargs",
    "mimi_codebooks",
    "mimi_decoder_parts",
    "mimi_encode_streaming",
    "output_cache",
    "reset_codebook_caches",
]

TESTED_TRANSFORMERS = ">=5.21,<5.25"
"""The transformers releases this module was run against (the bound in pyproject.toml's extras)."""

CACHE_NAMES = ("cache", "past_key_values")
MIMI_ENCODER_CACHE_NAMES = ("encoder_cache", "encoder_past_key_values")


class TransformersMismatch(CsmError):
    """The installed transformers lacks every name csm-multi knows for a field it needs."""

    def __init__(self, what: str, names: tuple[str, ...]):
        import transformers

        super().__init__(
            f"transformers {transformers.__version__}: {what} is none of {', '.join(names)}; csm-multi is tested "
            f"with transformers{TESTED_TRANSFORMERS}: pip install 'transformers{TESTED_TRANSFORMERS}'"
        )


def _first(names: tuple[str, ...], offered, what: str) -> str:
    for name in names:
        if name in offered:
            return name
    raise TransformersMismatch(what, names)


def _parameters(function) -> set[str]:
    return set(inspect.signature(function).parameters)


def _field_names(output) -> set[str]:
    return {f.name for f in dataclasses.fields(output)}


# ---------------------------------------------------------------------------------- causal LM caches
def cache_kwargs(model, cache) -> dict[str, Any]:
    """The keyword argument that hands ``cache`` (a transformers ``Cache``) to ``model.forward``."""
    what = f"the cache argument of {type(model).__name__}.forward"
    return {_first(CACHE_NAMES, _parameters(model.forward), what): cache}


def output_cache(output):
    """The cache a model's ``forward`` returned in ``output`` (a transformers ``ModelOutput``)."""
    return getattr(output, _first(CACHE_NAMES, _field_names(output), f"the cache field of {type(output).__name__}"))


# -------------------------------------------------------------------------------------------- Mimi
def mimi_encode_streaming(model, pcm, num_quantizers: int, cache, padding_cache):
    """``MimiModel.encode`` in streaming mode -> (codes [B,K,F], encoder cache, padding cache).

    ``cache`` and ``padding_cache`` are None on the first call, then what the previous call returned;
    transformers updates them in place.
    """
    offered = _parameters(model.encode)
    name = _first(MIMI_ENCODER_CACHE_NAMES, offered, "the encoder-cache argument of MimiModel.encode")
    for needed in ("padding_cache", "use_streaming"):
        _first((needed,), offered, f"MimiModel.encode's {needed} argument")
    out = model.encode(pcm, num_quantizers=num_quantizers, padding_cache=padding_cache, use_streaming=True,
                       **{name: cache})
    field = _first(MIMI_ENCODER_CACHE_NAMES, _field_names(out), f"the encoder-cache field of {type(out).__name__}")
    return out.audio_codes, getattr(out, field), out.padding_cache


class MimiDecoderParts(NamedTuple):
    """The modules of a ``MimiModel``'s decoder half, in the order they run after the quantizer."""

    upsample: Any  # MimiConvTranspose1d, or None when the config has no upsampling
    transformer: Any  # MimiTransformerModel (has .rotary_emb and .layers)
    seanet_layers: list  # the SEANet decoder's layers (MimiConv1d, MimiConvTranspose1d, MimiResnetBlock, ELU)


def mimi_decoder_parts(model) -> MimiDecoderParts:
    """Where this release keeps Mimi's decoder modules; ``ValueError`` when the model has no decoder."""
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        raise ValueError("the MimiModel has no decoder (it was built with decoder_config=None)")
    seanet = getattr(decoder, "decoder_seanet", None)
    if seanet is not None:  # MimiDecoderModel: upsample, transformer and SEANet in one sub-model
        return MimiDecoderParts(decoder.upsample, decoder.decoder_transformer, list(seanet.layers))
    children = dict(model.named_children())
    if "decoder_transformer" in children and hasattr(decoder, "layers"):  # the parts side by side on MimiModel
        return MimiDecoderParts(children.get("upsample"), children["decoder_transformer"], list(decoder.layers))
    raise TransformersMismatch("where MimiModel keeps its decoder transformer",
                               ("decoder.decoder_transformer", "decoder_transformer"))


def mimi_codebooks(model) -> list:
    """Every ``MimiEuclideanCodebook`` of ``model`` (its ``embed_sum`` and ``cluster_usage`` buffers are weights)."""
    from transformers.models.mimi.modeling_mimi import MimiEuclideanCodebook

    return [m for m in model.modules() if isinstance(m, MimiEuclideanCodebook)]


def reset_codebook_caches(model) -> None:
    """Drop the centroids each codebook caches on first use (``embed_sum / cluster_usage``): needed
    after its weights, device or dtype change, or it quantizes against the old ones."""
    for codebook in mimi_codebooks(model):
        if "_embed" not in vars(codebook):
            raise TransformersMismatch("MimiEuclideanCodebook's centroid cache", ("_embed",))
        codebook._embed = None
