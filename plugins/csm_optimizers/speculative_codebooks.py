"""The ``speculative-codebooks`` optimizer: draft a frame's codebooks 1..K-1, verify them in one decoder pass.

What it changes: the csm engines' ``frame_decoder`` (:class:`csm_core.components.FrameEngine`), set to a
:class:`~csm_optimizers.speculative_frame.SpeculativeFrame` over the engines' own model, so the frame loop
decodes each frame's depth codebooks speculatively (that module says how, and why the codes stay the
same). The drafts come from :mod:`csm_optimizers.codebook_drafts`.

How it gets there: the ``engine_built`` hook, called after the backend builds the tts stage's ``csm``
engines (and after they are re-allocated for a batch), installs the frame engine on them. It changes no
setting. Only the ``pytorch`` backend qualifies (eager engines over a :class:`~csm_model.model.Csm`,
with no whole-frame engine of their own): another backend is refused when the pipeline starts
(``configure``), and CUDA graphs (which install their own frame engine) or a quantized decoder (int8
quantizes activations per call, so a T-position pass would not compute what T=1 steps compute) are
refused when the engines are built.

Effect: **exact** (codes identical to step-by-step decoding under greedy decoding, and under seeded
sampling, since every codebook is decided from its own logits with the core's noise). Applies to
one-by-one speaking (``speak``, ``turn``); batched speaking and the server's continuous batching decode
step by step (the batch session does not use a frame engine), and the report says when no frame went
through it; engines re-allocated for a batch get a frame engine too, for one-by-one speaking afterwards.

Report: after every tts stage run, one line in the turn's events: frames, drafted and accepted guesses
(the acceptance rate), decoder calls per frame (passes + steps; K-1 step by step).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from csm_core import hookimpl
from csm_core.config import plugin_options
from csm_core.errors import CsmError
from csm_core.records import Optimizer, StageContext
from csm_optimizers.tts_backend import require_tts_backend

NAME = "speculative-codebooks"
SUPPORTED_BACKENDS = ("pytorch",)
log = logging.getLogger("csm.optimizers.speculative_codebooks")


class SpeculativeCodebooksOptions(BaseModel):
    """``[options.speculative-codebooks]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    draft: Literal["bigram", "previous"] = Field(
        "bigram", description="how codebooks are guessed: 'bigram' (codebook transitions seen in this utterance, "
        "else the previous frame's code) or 'previous' (the previous frame's codes)",
    )
    max_draft: int = Field(4, ge=1, description="guesses verified per decoder pass (at most K-1 = 31 are used)")
    rounds: int | None = Field(
        None, ge=1, description="passes per frame at most; after them, one decoder step per codebook "
        "(none: a pass wherever the drafter guesses)",
    )


class SpeculativeCodebooks:
    """Installs the speculative frame engine on the tts stage's pytorch csm engines; reports what it did."""

    def __init__(self, context: StageContext) -> None:
        self.context = context
        self.options = plugin_options(context.settings, NAME, SpeculativeCodebooksOptions)
        self.frames: list = []  # the SpeculativeFrame engines installed (one per csm engines built)

    def configure(self, settings) -> Mapping[str, Any]:
        require_tts_backend(settings, NAME, SUPPORTED_BACKENDS,
                            "eager decoder engines it can run a multi-position pass on")
        return {}

    @hookimpl
    def engine_built(self, stage: str, component: str, engine, context: StageContext) -> None:
        """Install a :class:`~csm_optimizers.speculative_frame.SpeculativeFrame` as the tts stage's csm
        engines' ``frame_decoder`` (also on engines re-allocated for a batch, for one-by-one speaking after it)."""
        if stage != "tts" or component != "csm":
            return
        from csm_model.model import Csm

        from csm_optimizers.codebook_drafts import make_drafter
        from csm_optimizers.speculative_frame import SpeculativeFrame

        settings = context.settings
        if settings.options.get("pytorch", {}).get("cuda_graphs"):
            raise CsmError(
                f"{NAME} and options.pytorch.cuda_graphs (the cuda-graphs optimizer) both replace the csm "
                "engines' frame decoder: use one of them"
            )
        if settings.weight_quantization_of("decoder") is not None:
            raise CsmError(
                f"{NAME} cannot verify drafts on a quantized depth decoder (weight_quantization.decoder is set): "
                "its int8 layers quantize activations per call, so one pass over several positions does not "
                "compute what one step per position computes; quantize only the backbone "
                "([options.weight-quantization] parts = [\"backbone\"]) or remove one of the two optimizers"
            )
        model = getattr(engine, "model", None)
        if not isinstance(model, Csm) or getattr(engine, "frame_decoder", None) is not None:
            raise CsmError(
                f"{NAME} needs eager csm engines over a csm_model Csm without a frame decoder; the "
                f"{context.backend.name if context.backend else '?'} backend built {type(engine).__name__} "
                f"over {type(model).__name__}: remove {NAME} from optimizers for this backend"
            )
        frame = SpeculativeFrame(
            model, make_drafter(self.options.draft, model.args.audio_vocab_size),
            max_draft=self.options.max_draft, rounds=self.options.rounds,
        )
        engine.frame_decoder = frame
        self.frames.append(frame)

    def counters(self):
        """The :class:`~csm_optimizers.speculative_frame.SpeculationCounters` of every installed engine, summed."""
        from csm_optimizers.speculative_frame import SpeculationCounters

        total = SpeculationCounters()
        for frame in self.frames:
            total = total + frame.counters
        return total

    @hookimpl(wrapper=True)
    def run_stage(self, stage: str, call, turn):
        if stage != "tts":
            return (yield)
        for frame in self.frames:
            frame.reset()  # drafts come from the utterance being spoken
        before = self.counters()
        result = yield
        summary = self.summary(self.counters() - before)
        log.info(summary)
        if turn is not None:
            turn.metrics.events.append(summary)
        return result

    def summary(self, run) -> str:
        """One line: frames, guesses drafted and accepted, decoder calls per frame."""
        options = self.options
        setup = (f"draft {options.draft}, max_draft {options.max_draft}, "
                 f"rounds {'no limit' if options.rounds is None else options.rounds}")
        if not run.frames:
            return (f"{NAME}: no frame went through the speculative decoder ({setup}); batched speaking "
                    "decodes step by step")
        steps_alone = self.frames[0].num_codebooks - 1
        rate = "n/a" if run.acceptance_rate is None else f"{run.acceptance_rate:.3f}"
        per_pass = "" if run.accepted_per_pass is None else f", {run.accepted_per_pass:.2f} accepted per pass"
        return (
            f"{NAME}: {run.frames} frames, acceptance {rate} ({run.accepted} of {run.drafted} drafted codes"
            f"{per_pass}); decoder calls per frame {run.decoder_calls_per_frame:.2f} ({run.passes / run.frames:.2f} "
            f"passes + {run.steps / run.frames:.2f} steps; {steps_alone} step by step) ({setup})"
        )


OPTIMIZER = Optimizer(
    name=NAME,
    factory=SpeculativeCodebooks,
    effect="exact",
    description="pytorch csm engines: codebooks 1..K-1 drafted (bigram/previous frame) and verified in one decoder "
    "pass, sequential from the first disagreement; identical codes (greedy and seeded sampling)",
)
