"""The ``speculative-codebooks`` optimizer: identical codes and audio, the accept and reject paths, the
acceptance rule's distribution, the drafters, and the refusals.

Random weights accept almost no guess (the reject path); guesses that are the reference codes (an
oracle) are all accepted; a model whose decoder is rigged to depend on one feature accepts about half of
the real drafters' guesses (both paths, with the real drafters).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from csm_core.errors import ConfigError, CsmError  # noqa: E402
from csm_core.generation.embedder import FrameEmbedder  # noqa: E402
from csm_core.generation.frames import generate_codes  # noqa: E402
from csm_core.generation.sampling import SamplingParams, draw_noise, filter_logits  # noqa: E402
from csm_model.presets import build_preset  # noqa: E402
from csm_optimizers.codebook_drafts import BigramDrafter, PreviousFrameDrafter, make_drafter  # noqa: E402
from csm_optimizers.speculative_codebooks import NAME  # noqa: E402
from csm_optimizers.speculative_frame import SpeculativeFrame, accept_draft  # noqa: E402
from csm_pytorch.engines import TorchCsmEngines  # noqa: E402
from optimizer_pipelines import text_prompt, tiny_pipeline  # noqa: E402

GREEDY_SETTINGS = {"temperature": 0.0, "max_new_frames": 10, "max_silent_frames": 10}
SAMPLED_SETTINGS = {"temperature": 0.9, "top_k": 50, "seed": 7, "max_new_frames": 10, "max_silent_frames": 10}
GREEDY = SamplingParams(temperature=0.0, code_limit=2048)
SAMPLED = SamplingParams(temperature=0.9, top_k=50, code_limit=2048)
TEXT = "Guess the codebooks, then check them."


class SequenceDrafter:
    """Guesses frame i's codes as ``frames[i]`` [B,K] (an oracle when they are the reference codes)."""

    name = "sequence"

    def __init__(self, frames):
        self.frames, self.index = frames, 0

    def draft(self, prefix, start, count):
        return self.frames[self.index][:, start : start + count]

    def observe(self, frame):
        self.index += 1

    def reset(self):
        self.index = 0


def speak(optimizers=(), generation=GREEDY_SETTINGS, options=None, drafter=None, preset="tiny"):
    with tiny_pipeline(models={"preset": preset}, generation=generation, optimizers=list(optimizers),
                       options=options or {}) as pipeline:
        if drafter is not None:
            pipeline.stage("tts").engines.frame_decoder.drafter = drafter
        turn = pipeline.speak(TEXT)
        frame = pipeline.stage("tts").engines.frame_decoder
        return turn, (frame.counters if frame is not None else None)


def summary_of(turn) -> str:
    [line] = [event for event in turn.metrics.events if event.startswith(f"{NAME}:")]
    return line


@pytest.fixture(scope="module")
def reference():
    return speak()[0]


# -- the pipeline: identical codes and audio ---------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"max_draft": 31, "rounds": 1}, {"draft": "previous", "max_draft": 2}])
def test_greedy_codes_and_audio_are_identical_to_none_when_guesses_are_rejected(reference, options):
    turn, counters = speak([NAME], options={NAME: options})
    assert reference.reply_codes.shape[1] == 10
    np.testing.assert_array_equal(turn.reply_codes, reference.reply_codes)
    np.testing.assert_array_equal(turn.audio.samples, reference.audio.samples)
    assert counters.frames == 10 and counters.passes > 0 and counters.drafted > 0
    assert counters.acceptance_rate < 0.1  # random weights: almost every guess is rejected
    line = summary_of(turn)
    assert f"10 frames, acceptance {counters.acceptance_rate:.3f}" in line and "31 step by step" in line


def test_greedy_codes_and_audio_are_identical_when_every_guess_is_accepted(reference):
    frames = [torch.from_numpy(reference.reply_codes[:, i]).long()[None] for i in range(10)]
    turn, counters = speak([NAME], drafter=SequenceDrafter(frames))
    np.testing.assert_array_equal(turn.reply_codes, reference.reply_codes)
    np.testing.assert_array_equal(turn.audio.samples, reference.audio.samples)
    # max_draft 4: 4 guesses + the free codebook per pass (6 passes: codebooks 1..30), codebook 31 guessed
    # alone: 7 passes and 25 guesses per frame, no step
    assert (counters.frames, counters.passes, counters.steps, counters.drafted) == (10, 70, 0, 250)
    assert counters.acceptance_rate == 1.0 and counters.decoder_calls_per_frame == 7.0
    assert "acceptance 1.000 (250 of 250 drafted codes, 3.57 accepted per pass); decoder calls per frame 7.00" \
        in summary_of(turn)


def test_seeded_sampling_gives_the_codes_and_audio_of_none():
    plain, _ = speak(generation=SAMPLED_SETTINGS)
    turn, counters = speak([NAME], generation=SAMPLED_SETTINGS)
    np.testing.assert_array_equal(turn.reply_codes, plain.reply_codes)
    np.testing.assert_array_equal(turn.audio.samples, plain.audio.samples)
    assert counters.frames == plain.reply_codes.shape[1] and counters.passes > 0


@pytest.mark.slow  # 11 to 26 s on this shared 2-core machine (loading the small preset and its Mimi)
def test_small_preset_greedy_codes_and_audio_are_identical():
    """One small pipeline (loading two costs most of the time): the same engines without the frame
    decoder run the step-by-step loop, which is what ``none`` runs."""
    settings = dict(GREEDY_SETTINGS, max_new_frames=6, max_silent_frames=6)
    with tiny_pipeline(models={"preset": "small"}, generation=settings, optimizers=[NAME]) as pipeline:
        engines = pipeline.stage("tts").engines
        speculative, engines.frame_decoder = engines.frame_decoder, None
        plain = pipeline.speak(TEXT)
        engines.frame_decoder = speculative
        turn = pipeline.speak(TEXT)
    np.testing.assert_array_equal(turn.reply_codes, plain.reply_codes)
    np.testing.assert_array_equal(turn.audio.samples, plain.audio.samples)
    assert plain.reply_codes.shape[1] == 6 and speculative.counters.frames == 6


# -- the engine: the accept path, the KV cache of an accepted prefix, rows ---------------------------

@pytest.fixture(scope="module")
def tiny():
    model, _ = build_preset("tiny")
    return model


def codes(model, frame_decoder=None, sampling=GREEDY, prompt=None, frames=6):
    engines = TorchCsmEngines(model, batch_size=2)
    engines.frame_decoder = frame_decoder
    prompt = text_prompt(model.args, 12) if prompt is None else prompt
    return generate_codes(engines, FrameEmbedder.from_model(model), prompt, max_frames=frames, sampling=sampling,
                          seed=3, silence_guard=None)


def test_a_rejection_midway_reuses_the_cached_prefix_and_continues_step_by_step(tiny):
    reference = codes(tiny)  # [1,K,F]
    guesses = reference.clone()
    guesses[:, 10] = (guesses[:, 10] + 1) % 2048  # codebook 10 guessed wrong in every frame
    frame = SpeculativeFrame(tiny, SequenceDrafter(list(guesses.unbind(2))), max_draft=31, rounds=1)
    assert torch.equal(codes(tiny, frame), reference)
    # one pass accepts codebooks 1..9 and decides 10 from its logits; 11..31 are steps over the cached prefix
    c = frame.counters
    assert (c.frames, c.passes, c.steps, c.drafted, c.accepted) == (6, 6, 6 * 21, 6 * 31, 6 * 9)
    assert c.decoder_calls_per_frame == 22.0


def test_rows_rejecting_at_different_codebooks_keep_their_own_codes(tiny):
    tokens, mask = text_prompt(tiny.args, 12, seed=3)
    other, other_mask = text_prompt(tiny.args, 12, seed=4)
    prompt = (torch.cat((tokens, other)), torch.cat((mask, other_mask)))  # two rows of one length
    reference = codes(tiny, prompt=prompt)  # [2,K,F]
    guesses = reference.clone()
    guesses[0, 5] = (guesses[0, 5] + 1) % 2048
    guesses[1, 20] = (guesses[1, 20] + 1) % 2048
    frame = SpeculativeFrame(tiny, SequenceDrafter(list(guesses.unbind(2))), max_draft=31, rounds=2)
    assert torch.equal(codes(tiny, frame, prompt=prompt), reference)
    assert frame.counters.accepted > 0


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("draft", ["bigram", "previous"])
def test_real_drafters_on_a_rigged_decoder_are_often_accepted_and_give_identical_codes(tiny, sampling, draft):
    """The decoder's output rides on one feature whose sign picks one of two codes per codebook: the codes
    depend on the inputs, and the drafters' guesses are right about half the time."""
    model = copy.deepcopy(tiny)
    k = model.args.num_codebooks
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.decoder.norm.weight.zero_()
        model.decoder.norm.weight[0] = 1.0
        model.audio_head.zero_()
        for c, (a, b) in enumerate(torch.randint(0, 2048, (k - 1, 2), generator=gen).tolist()):
            model.audio_head[c, 0, a], model.audio_head[c, 0, b] = 300.0, -300.0
    reference = codes(model, sampling=sampling, frames=12)
    frame = SpeculativeFrame(model, make_drafter(draft, model.args.audio_vocab_size), max_draft=4)
    assert torch.equal(codes(model, frame, sampling=sampling, frames=12), reference)
    c = frame.counters
    assert 0.25 < c.acceptance_rate < 0.75, c
    assert c.decoder_calls_per_frame < 20


# -- the acceptance rule --------------------------------------------------------------------------------

def draws(logits, draft, params, n=200_000, seed=11):
    """``accept_draft`` over ``n`` rows of the same logits, and the noise it drew (the same generator)."""
    rows = logits.expand(n, -1)
    drafts = torch.full((n,), draft)
    chosen, accepted = accept_draft(rows, drafts, params, torch.Generator().manual_seed(seed))
    limit = params.code_limit or logits.shape[-1]
    noise = draw_noise((n, min(limit, logits.shape[-1])), "cpu", torch.Generator().manual_seed(seed))
    return chosen, accepted, noise


def bound(p, n):  # 5 standard deviations of a frequency
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("params,draft", [
    (SamplingParams(temperature=1.0, top_k=None), 2),
    (SamplingParams(temperature=0.7, top_k=4), 0),
    (SamplingParams(temperature=1.3, top_k=None, top_p=0.8), 3),
])
def test_a_draft_is_accepted_with_probability_p_and_otherwise_drawn_from_the_residual(params, draft):
    logits = torch.tensor([[0.3, -0.2, 1.1, 0.6, -1.0, 0.0]])
    p = filter_logits(logits, params).softmax(-1)[0].double().numpy()
    chosen, accepted, noise = draws(logits, draft, params)
    n = len(chosen)
    assert torch.equal(accepted, chosen == draft)
    assert abs(accepted.double().mean().item() - p[draft]) < bound(p[draft], n)
    # the residual: p without the draft, renormalized
    residual = p.copy()
    residual[draft] = 0
    residual /= residual.sum()
    rejected = chosen[~accepted]
    freq = np.bincount(rejected.numpy(), minlength=len(p)) / len(rejected)
    for code in range(len(p)):
        assert abs(freq[code] - residual[code]) < bound(residual[code], len(rejected)), (code, freq, residual)
    # exactly: a rejected draw is the race over the residual with the same noise
    residual_race = (torch.from_numpy(residual).float() / noise[~accepted]).argmax(-1)
    assert torch.equal(rejected, residual_race)
    # overall the output is distributed as p: the core's own draw with the same noise
    overall = np.bincount(chosen.numpy(), minlength=len(p)) / n
    assert all(abs(overall[c] - p[c]) < bound(p[c], n) for c in range(len(p)))


def test_a_draft_outside_top_k_or_at_the_code_limit_is_never_accepted():
    logits = torch.tensor([[0.3, -0.2, 1.1, 0.6, -1.0, 0.0]])
    _, accepted, _ = draws(logits, 4, SamplingParams(temperature=1.0, top_k=3), n=20_000)
    assert not accepted.any()
    _, accepted, _ = draws(logits, 5, SamplingParams(temperature=1.0, top_k=None, code_limit=5), n=20_000)
    assert not accepted.any()


def test_greedy_accepts_exactly_the_argmax():
    logits = torch.tensor([[0.3, 1.1, 0.6], [2.0, 1.1, 0.6]])
    chosen, accepted = accept_draft(logits, torch.tensor([1, 1]), SamplingParams(temperature=0.0))
    assert chosen.tolist() == [1, 0] and accepted.tolist() == [True, False]


# -- drafters -------------------------------------------------------------------------------------------

def test_the_previous_frame_drafter_guesses_the_last_frame_and_nothing_for_another_batch():
    drafter = PreviousFrameDrafter()
    assert drafter.draft([torch.tensor([1])], 1, 3) is None
    drafter.observe(torch.tensor([[1, 2, 3, 4, 5]]))
    assert drafter.draft([torch.tensor([9])], 1, 3).tolist() == [[2, 3, 4]]
    assert drafter.draft([torch.tensor([9, 9])], 1, 3) is None


def test_the_bigram_drafter_chains_transitions_and_falls_back_to_the_previous_frame():
    drafter = BigramDrafter(vocabulary=10)
    drafter.observe(torch.tensor([[1, 2, 3, 4]]))
    drafter.observe(torch.tensor([[5, 6, 7, 8]]))
    assert drafter.draft([torch.tensor([1])], 1, 3).tolist() == [[2, 3, 4]]  # 1 -> 2 -> 3 -> 4
    assert drafter.draft([torch.tensor([9])], 1, 3).tolist() == [[6, 7, 8]]  # unseen: the previous frame's
    assert drafter.draft([torch.tensor([5]), torch.tensor([2])], 2, 5).tolist() == [[3, 4]]  # ends at K-1
    drafter.reset()
    assert drafter.draft([torch.tensor([1])], 1, 3) is None


def test_a_drafter_guessing_outside_the_vocabulary_is_an_error(tiny):
    bad = SequenceDrafter([torch.full((1, tiny.args.num_codebooks), tiny.args.audio_vocab_size)] * 2)
    with pytest.raises(ValueError, match=r"drafter 'sequence' guessed a code outside 0\.\.2050"):
        codes(tiny, SpeculativeFrame(tiny, bad), frames=1)
    with pytest.raises(ValueError, match=r"unknown drafter 'trigram': choose one of bigram, previous"):
        make_drafter("trigram", 10)


# -- where it applies, and what it refuses ----------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_another_backend_is_refused_naming_it(backend):
    with pytest.raises(CsmError, match=rf"runs on the pytorch backend.*tts stage runs on '{backend}'"):
        tiny_pipeline(backend=backend, optimizers=[NAME])


def test_cuda_graphs_and_a_quantized_decoder_are_refused_when_the_engines_are_built():
    from csm_core.records import StageContext
    from csm_optimizers.speculative_codebooks import SpeculativeCodebooks

    # (on a CPU the pytorch backend refuses CUDA graphs itself first: the hook is asked directly)
    with tiny_pipeline(optimizers=[NAME], options={"pytorch": {"cuda_graphs": True}}) as pipeline:
        context = StageContext("tts", pipeline.settings, None)
        engines = TorchCsmEngines(build_preset("tiny")[0])
        with pytest.raises(CsmError, match=r"cuda_graphs.*both replace the csm engines' frame decoder"):
            SpeculativeCodebooks(context).engine_built("tts", "csm", engines, context)
        assert engines.frame_decoder is None
    with tiny_pipeline(optimizers=[NAME, "weight-quantization"]) as pipeline:
        with pytest.raises(CsmError, match=r"quantized depth decoder.*parts = \[\"backbone\"\]"):
            pipeline.stage("tts")


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match=r"speculative-codebooks.*max_draft"):
        tiny_pipeline(optimizers=[NAME], options={NAME: {"max_draft": 0}})
    with pytest.raises(ConfigError, match=r"speculative-codebooks.*draft"):
        tiny_pipeline(optimizers=[NAME], options={NAME: {"draft": "trigram"}})


def test_batched_speaking_decodes_step_by_step_and_one_by_one_speaking_afterwards_still_speculates(reference):
    from csm_core.utterances import speak_many

    with tiny_pipeline(generation=GREEDY_SETTINGS, optimizers=[NAME, "batched-generation"]) as pipeline:
        batched = speak_many(pipeline, [TEXT, "A second one."], context=())
        assert all(f"{NAME}: no frame went through the speculative decoder" in " ".join(t.metrics.events)
                   for t in batched[:1])
        engines = pipeline.stage("tts").engines  # re-allocated for 2 rows by the batch
        assert engines.batch_size == 2 and engines.frame_decoder is not None
        turn = pipeline.speak(TEXT)
    np.testing.assert_array_equal(turn.reply_codes, reference.reply_codes)
    assert f"{NAME}: 10 frames" in summary_of(turn)


def test_without_the_optimizer_the_engines_have_no_frame_decoder():
    with tiny_pipeline() as pipeline:
        assert pipeline.stage("tts").engines.frame_decoder is None
