"""The ``transformers`` llm stage: a causal chat LM that answers the user with text and an emotion.

The model comes from ``models.llm`` (a local directory or a cached repo id) or, with
``models.preset`` and no ``llm``, a random tiny Llama-style chat model (see
:mod:`csm_listen.model_sources`). The prompt and the parsing of the answer are in
:mod:`csm_listen.reply_format`: the tokenizer's chat template renders the messages when it has one
(a template that rejects the system role gets the instruction folded into the first user turn),
else a plain ``Role: content`` transcript. The oldest history turns are dropped when the prompt
would not leave ``max_new_tokens`` of room in the model's context.

Options, config table ``[options.transformers]`` (:class:`TransformersLlmOptions`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from csm_core.errors import ConfigError
from csm_core.stages import Reply, ReplyRequest
from csm_listen.reply_format import build_messages, parse_reply, render_plain


class TransformersLlmOptions(BaseModel):
    """``[options.transformers]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(160, ge=1, le=4096, description="tokens of answer at most")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus mass when sampling")
    seed: int = Field(0, description="seed of the sampling generator (used when temperature > 0)")


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
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.prompt_budget = limit - self.options.max_new_tokens
        if self.prompt_budget < 64:
            raise ConfigError(
                f"[options.transformers] max_new_tokens = {self.options.max_new_tokens} leaves "
                f"{self.prompt_budget} of the model's {limit} positions for the prompt: lower it"
            )

    def prompt(self, request: ReplyRequest) -> str:
        """The prompt text for ``request``, history trimmed from the oldest turn to fit the budget."""
        history = request.history
        while True:
            trimmed = ReplyRequest(request.transcript, request.sentiment, history, request.emotions)
            text = self._render(build_messages(trimmed, self.user_speaker, self.reply_speaker))
            if not history or len(self._encode(text)) <= self.prompt_budget:
                return text
            history = history[1:]

    def reply(self, request: ReplyRequest) -> Reply:
        """Generate, decode (special tokens removed) and parse the answer to ``request``."""
        ids = torch.tensor([self._encode(self.prompt(request))], device=self.device)
        sampling = self.options.temperature > 0
        kwargs = (
            {"do_sample": True, "temperature": self.options.temperature, "top_p": self.options.top_p}
            if sampling
            else {"do_sample": False}
        )
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            torch.manual_seed(self.options.seed)
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.options.max_new_tokens,
                    num_beams=1,
                    pad_token_id=self._pad_id(),
                    **kwargs,
                )
        raw = self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
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

    def _pad_id(self) -> int | None:
        if self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        eos = self.model.generation_config.eos_token_id
        return eos[0] if isinstance(eos, (list, tuple)) else eos


def _load(directory: Path, device: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from csm_listen.model_sources import NotAModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise NotAModel(
            f"{str(directory)!r} does not load as a causal language model with its tokenizer "
            f"({type(exc).__name__}: {exc}); models.llm must name a chat model such as Qwen/Qwen2.5-0.5B-Instruct"
        ) from None
    return tokenizer, model.to(device).eval()
