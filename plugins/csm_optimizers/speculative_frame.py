"""Speculative depth decoding: draft a frame's codebooks, verify them in one decoder pass.

CSM's depth decoder is sequential across codebooks (codebook ``c`` is conditioned on ``0..c-1``), so
the core's :func:`~csm_core.generation.frames.decode_frame` makes K-1 decoder calls per frame.
:class:`SpeculativeFrame`, a :class:`csm_core.components.FrameEngine`, decodes a frame like this:

1. codebook 0 is chosen from the backbone's logits, as the core chooses it;
2. a drafter (:mod:`csm_optimizers.codebook_drafts`) guesses the next codebooks ``pos..pos+m-1``
   (``m <= max_draft``);
3. one teacher-forced pass of the decoder runs over the inputs not yet in its KV cache followed by the
   embeddings of the guesses, and returns logits at every position (:meth:`SpeculativeFrame.logits_pass`,
   built from the shared model: ``Csm.projection``, ``Csm.decoder``, ``Csm.audio_head``): those of
   codebooks ``pos..pos+m`` (the last one only when all ``m`` guesses are fed, i.e. ``pos+m < K``);
4. the codebooks are decided in order from those logits (:func:`accept_draft`); while the decision
   equals the guess, the guess is *accepted* and the next codebook's logits (conditioned on it) are
   valid; the first decision that differs replaces the guess and ends the pass. When every guess is
   accepted, the last logits decide one more codebook for free;
5. decoding goes on from the first undecided codebook: with another pass while ``rounds`` allow and the
   drafter guesses, else with one decoder step per codebook (``Csm.decoder_logits``, the eager PyTorch
   engine's step).

**KV cache.** A pass writes keys and values at every position it runs. Those of the accepted prefix are
the ones sequential decoding writes (position p depends on the inputs at 0..p only, all accepted), and
they are reused: the next call starts at the first position whose input is new. Entries written for
rejected guesses lie beyond it; the next call overwrites the first, and the decoder's causal mask (by
position) hides the others until they are overwritten. Nothing is recomputed.

**Decisions.** Each codebook is decided by :func:`csm_core.generation.sampling.sample` from its own
logits, the noise drawn in the core's order (one ``draw_noise`` per codebook, codebook 0 first): greedy,
the argmax; sampling, the exponential race ``argmax(p / noise)`` with ``p`` from ``filter_logits``
(temperature, top-k, top-p and ``code_limit`` as the core applies them). Accepting the guess ``x`` when
the race's winner is ``x`` is the standard speculative acceptance rule for a point-mass draft: it happens
with probability ``p(x)``; otherwise the winner is the race among the other codes, a draw from the
residual (``p`` with ``x`` removed, renormalized: renormalizing does not change an argmax). The output
distribution is therefore ``p``'s, and because the noise is the core's, a seed gives the codes of the
step-by-step loop. Both hold in exact arithmetic; in floating point a T-position pass sums in another
order than T=1 steps (docs/optimizers.md gives the measured differences), as a batch of rows does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from csm_core.generation.embedder import FrameEmbedder
from csm_core.generation.sampling import SamplingParams, sample
from csm_model.model import Csm

__all__ = ["SpeculationCounters", "SpeculativeFrame", "accept_draft"]


def accept_draft(logits: torch.Tensor, draft: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify a point-mass draft: ``(codes [B], accepted [B] bool)`` for ``logits`` [B,V] and ``draft`` [B].

    ``codes`` is what :func:`~csm_core.generation.sampling.sample` chooses from ``logits`` with
    ``generator`` (it draws the same noise, the core's one draw for this codebook). The draft is accepted
    where that choice equals it: with probability ``p(draft)`` under sampling (``p`` as ``filter_logits``
    gives it; a draft outside top-k/top-p or at/above ``code_limit`` has ``p = 0``), and exactly when it
    is the argmax under greedy decoding. Where it is rejected, the code is the race's winner among the
    other codes: a draw from ``p`` without the draft, renormalized (the residual distribution).
    """
    codes = sample(logits, params, generator)
    return codes, codes == draft


@dataclass(frozen=True)
class SpeculationCounters:
    """What :class:`SpeculativeFrame` did; counters add and subtract field by field.

    ``passes`` teacher-forced passes over drafted positions and ``steps`` one-codebook decoder steps
    (each a call for all rows); ``drafted`` guesses proposed to a pass and ``accepted`` those the decoder
    agreed with (counted per row); ``pass_rows`` rows over all passes (``passes`` x rows).
    """

    frames: int = 0
    passes: int = 0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    pass_rows: int = 0

    def __add__(self, other: "SpeculationCounters") -> "SpeculationCounters":
        return SpeculationCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: "SpeculationCounters") -> "SpeculationCounters":
        return SpeculationCounters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted guesses; None when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def accepted_per_pass(self) -> float | None:
        """Mean accepted prefix of a pass (per row); None without passes."""
        return self.accepted / self.pass_rows if self.pass_rows else None

    @property
    def decoder_calls_per_frame(self) -> float | None:
        """Passes + steps per frame (K-1 step by step); None without frames."""
        return (self.passes + self.steps) / self.frames if self.frames else None


class SpeculativeFrame:
    """:class:`~csm_core.components.FrameEngine` decoding codebooks 1..K-1 speculatively (module docstring).

    ``model`` is the :class:`~csm_model.model.Csm` whose eager engines the frame loop also drives (its
    decoder KV cache is the one used here); ``drafter`` guesses codes; ``max_draft`` caps the guesses per
    pass (at most K-1); ``rounds`` caps the passes per frame (None: a pass whenever the drafter guesses,
    so never more decoder calls than step by step). :attr:`counters` accumulate over the engine's life.
    """

    def __init__(self, model: Csm, drafter, *, max_draft: int = 4, rounds: int | None = None) -> None:
        if isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 1:
            raise ValueError(f"SpeculativeFrame: max_draft={max_draft!r} must be an integer >= 1 (codebooks per pass)")
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise ValueError(f"SpeculativeFrame: rounds={rounds!r} must be an integer >= 1 (passes per frame), or None")
        self.model = model
        self.embedder = FrameEmbedder.from_model(model)
        self.num_codebooks = model.args.num_codebooks
        self.vocabulary = model.args.audio_vocab_size
        self.drafter = drafter
        self.max_draft = min(max_draft, self.num_codebooks - 1)
        self.rounds = rounds
        self.counters = SpeculationCounters()

    def supports(self, params: SamplingParams) -> bool:
        """Every sampling setting the core has: greedy, and sampling with temperature/top-k/top-p/code_limit."""
        return isinstance(params, SamplingParams)

    def reset(self) -> None:
        """Forget what the drafter learned (a new utterance)."""
        self.drafter.reset()

    @torch.inference_mode()
    def decode(self, hidden: torch.Tensor, c0_logits: torch.Tensor, params: SamplingParams,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes [B,K] of one frame (:class:`~csm_core.components.FrameEngine`); counts what it did."""
        k, b = self.num_codebooks, hidden.shape[0]
        codes = [sample(c0_logits, params, generator)]
        self.model.decoder.reset_cache()
        # Inputs not yet in the decoder's cache, from position `start` on.
        pending = torch.cat((hidden.unsqueeze(1).to(self.embedder.dtype), self.embedder.embed_audio(0, codes[0])), dim=1)
        start, rounds = 0, self.rounds
        passes = steps = drafted = accepted = 0
        while len(codes) < k:
            pos = len(codes)
            drafts = self._draft(codes, pos) if rounds is None or rounds > 0 else None
            if drafts is None:
                positions = torch.arange(start, start + pending.shape[1], device=hidden.device).expand(b, -1)
                codes.append(sample(self.model.decoder_logits(pending, positions), params, generator))
                steps += 1
            else:
                rounds = None if rounds is None else rounds - 1
                fed = drafts[:, : k - 1 - pos]  # the guess for codebook K-1 is compared, never fed
                logits = self.logits_pass(torch.cat((pending, self._embed(pos, fed)), dim=1), start, fed.shape[1] + 1)
                passes, drafted = passes + 1, drafted + drafts.numel()
                for j in range(logits.shape[1]):
                    if j == drafts.shape[1]:  # every guess accepted: the last logits decide one more codebook
                        codes.append(sample(logits[:, j], params, generator))
                        break
                    code, agree = accept_draft(logits[:, j], drafts[:, j], params, generator)
                    codes.append(code)
                    accepted += int(agree.sum())
                    if not bool(agree.all()):
                        break
            start = len(codes)
            if start < k:
                pending = self.embedder.embed_audio(start - 1, codes[-1])
        frame = torch.stack(codes, dim=1)
        self.drafter.observe(frame)
        self.counters = self.counters + SpeculationCounters(1, passes, steps, drafted, accepted, passes * b)
        return frame

    def logits_pass(self, x: torch.Tensor, start: int, outputs: int) -> torch.Tensor:
        """One teacher-forced decoder pass: ``x`` [B,T,D] (backbone width) at positions ``start..start+T-1``
        -> logits [B,outputs,V] of the last ``outputs`` positions (position ``p`` gives codebook ``p``'s
        logits through ``audio_head[p-1]``, as ``Csm.decoder_logits`` does for its last position)."""
        t = x.shape[1]
        if not 1 <= outputs <= t or start + t - outputs < 1 or start + t > self.num_codebooks:
            raise ValueError(
                f"logits_pass: {outputs} outputs of {t} positions from {start} are outside codebooks "
                f"1..{self.num_codebooks - 1}"
            )
        positions = torch.arange(start, start + t, device=x.device).expand(x.shape[0], t)
        hidden = self.model.decoder(self.model.projection(x), positions)[:, t - outputs :]  # [B,n,Ddec]
        heads = self.model.audio_head[start + t - outputs - 1 : start + t - 1]  # [n,Ddec,V]
        return torch.bmm(hidden.transpose(0, 1), heads.to(hidden.dtype)).transpose(0, 1)

    def _embed(self, first: int, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B,m] of codebooks ``first..first+m-1`` -> embeddings [B,m,D]."""
        offsets = (first + torch.arange(codes.shape[1], device=codes.device)) * self.vocabulary
        return F.embedding(codes + offsets, self.embedder.audio_embeddings)

    def _draft(self, codes: list[torch.Tensor], pos: int) -> torch.Tensor | None:
        """The drafter's guesses [B,m] for codebooks ``pos..``, checked; None when it has none."""
        count = min(self.max_draft, self.num_codebooks - pos)
        drafts = self.drafter.draft(codes, pos, count)
        if drafts is None or drafts.shape[-1] == 0:
            return None
        name = getattr(self.drafter, "name", type(self.drafter).__name__)
        if drafts.ndim != 2 or drafts.shape[0] != codes[0].shape[0] or drafts.shape[1] > count:
            raise ValueError(
                f"drafter {name!r} returned guesses of shape {tuple(drafts.shape)} for {codes[0].shape[0]} rows and "
                f"at most {count} codebooks from {pos}: it must return [rows, m <= {count}]"
            )
        if bool(((drafts < 0) | (drafts >= self.vocabulary)).any()):
            raise ValueError(f"drafter {name!r} guessed a code outside 0..{self.vocabulary - 1}")
        return drafts
