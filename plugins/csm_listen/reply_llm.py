"""The ``transformers`` llm stage: a causal chat LM that answers the user with text and an emotion.

The model comes from ``models.llm`` (a local directory or a cached repo id) or, with
``models.preset`` and no ``llm``, a random tiny Llama-style chat model (see
:mod:`csm_listen.model_sources`). The prompt and the parsing of the answer are in
:mod:`csm_listen.reply_format`: the tokenizer's chat template renders the messages when it has one
(a template that rejects the system role gets the instruction folded into the first user turn),
else a plain ``Role: content`` transcript. The oldest history turns are dropped when the prompt
would not leave ``max_new_tokens`` of room in the LM's cache (``max_positions``).

The model runs as the ``causal_lm`` engine of the stage's backend (``backends.llm``, else ``backend``):
``pytorch`` (:mod:`csm_pytorch.causal_lm`) or ``onnxruntime`` (:mod:`csm_onnxruntime.causal_lm`), both
driven by the same token loop, :func:`csm_core.generation.lm_decoding.decode_tokens`. The stage declares
``components=("causal_lm",)``, so it always needs a backend with that engine; a context without one
is refused with :class:`csm_core.errors.BackendUnavailable`.

Options, config table ``[options.transformers]`` (:class:`TransformersLlmOptions`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from csm_core.components import CAUSAL_LM, CausalLm
from csm_core.errors import ConfigError, CsmError
from csm_core.stages import Reply, ReplyRequest
from csm_core.generation.lm_decoding import LmSampling, decode_tokens
from csm_listen.reply_format import build_messages, parse_reply, render_plain

DEFAULT_MAX_POSITIONS = 4096
"""The LM cache size when ``max_positions`` is not set: the model's own limit, at most this."""


class TransformersLlmOptions(BaseModel):
    """``[options.transformers]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(160, ge=1, le=4096, description="tokens of answer at most")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus mass when sampling")
    seed: int = Field(0, description="seed of the sampling generator (used when temperature > 0)")
    max_positions: int | None = Field(
        None, ge=65, description="positions (prompt + answer) the LM's KV cache holds; default: the model's "
        f"max_position_embeddings, at most {DEFAULT_MAX_POSITIONS}",
    )


class TransformersReplyModel:
    """``reply(request) -> Reply`` with any causal LM; built from a :class:`StageContext`."""

    def __init__(self, context):
        from csm_core.config import plugin_options
        from csm_listen.model_sources import resolve_model_dir, torch_placement

        self.options = plugin_options(context.settings, "transformers", TransformersLlmOptions)
        self.user_speaker = context.settings.user_speaker
        self.reply_speaker = context.settings.speaker
        self.model_dir: Path = resolve_model_dir(context.settings, "llm")
        self.device, self.dtype = torch_placement(context)
        self.tokenizer, self.model = context.resource(
            ("causal-lm", str(self.model_dir), self.device, self.dtype),
            lambda: _load(self.model_dir, self.device, self.dtype),
        )
        self.max_positions = self._max_positions()
        self.prompt_budget = self.max_positions - self.options.max_new_tokens
        if self.prompt_budget < 64:
            raise ConfigError(
                f"[options.transformers] max_new_tokens = {self.options.max_new_tokens} leaves "
                f"{self.prompt_budget} of the LM's {self.max_positions} positions for the prompt: lower it "
                "(or raise max_positions)"
            )
        self.engine = context.engine(CAUSAL_LM, CausalLm(self.model, self.max_positions))
        self.sampling = LmSampling(self.options.temperature, self.options.top_p, self.options.seed)

    def _max_positions(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        wanted = self.options.max_positions
        if wanted is None:
            return min(limit, DEFAULT_MAX_POSITIONS)
        if wanted > limit:
            raise ConfigError(
                f"[options.transformers] max_positions = {wanted} is more than the {limit} positions "
                f"{self.model_dir.name!r} was trained for (max_position_embeddings): lower it"
            )
        return wanted

    def prompt(self, request: ReplyRequest) -> str:
        """The prompt text for ``request``, history trimmed from the oldest turn to fit the budget."""
        history = request.history
        while True:
            trimmed = ReplyRequest(request.transcript, request.sentiment, history, request.emotions)
            text = self._render(build_messages(trimmed, self.user_speaker, self.reply_speaker))
            size = len(self._encode(text))
            if size <= self.prompt_budget:
                return text
            if not history:
                raise CsmError(
                    f"the reply prompt is {size} tokens without any history, more than the {self.prompt_budget} "
                    f"that [options.transformers] max_positions = {self.max_positions} minus max_new_tokens = "
                    f"{self.options.max_new_tokens} leave: raise max_positions or lower max_new_tokens"
                )
            history = history[1:]

    def reply(self, request: ReplyRequest) -> Reply:
        """Generate, decode (special tokens removed) and parse the answer to ``request``."""
        tokens = decode_tokens(
            self.engine, self._encode(self.prompt(request)), self.options.max_new_tokens, self.sampling,
            stop_ids=self._stop_ids(),
        )
        raw = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return parse_reply(raw, request.emotions, request.sentiment)

    def _render(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return render_plain(messages)
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 TemplateError raised by templates without a system role
            if "system" not in str(exc).lower():
                raise
            system, first, *rest = messages
            merged = [{"role": first["role"], "content": system["content"] + "\n\n" + first["content"]}, *rest]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        # A rendered chat template already holds its BOS; add none for templates, the default otherwise.
        return self.tokenizer(text, add_special_tokens=not getattr(self.tokenizer, "chat_template", None))["input_ids"]

    def _stop_ids(self) -> list[int]:
        """The EOS ids ``generate`` would stop at: the generation config's, else the model config's."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        if eos is None:
            return []
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _load(directory: Path, device: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from csm_listen.model_sources import load_pretrained

    return load_pretrained(
        directory, device, dtype, AutoTokenizer, AutoModelForCausalLM,
        "a causal language model with its tokenizer",
        "models.llm must name a chat model such as Qwen/Qwen2.5-0.5B-Instruct",
    )
