"""The ``batched-generation`` optimizer: ``speak_many`` in batches vs one by one, and ``CsmSpeaker.speak_batch``.

Quality gate (effect "exact"): under greedy decoding every row of a ragged batch gets the codes it gets
when spoken alone, on the tiny preset's random weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from audio_signals import tone
from csm_core.config import Settings
from csm_core.errors import ConfigError, CsmError
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins
from csm_core.stages import Segment, SpeechParams, SpeechRequest
from csm_core.utterances import speak_many
from optimizer_pipelines import tiny_pipeline

torch = pytest.importorskip("torch")

from forced_engines import Forcing  # noqa: E402

FRAMES = 6
GREEDY = {"temperature": 0.0, "max_new_frames": FRAMES}
TEXTS = ["Hi.", "A rather longer sentence to say.", "Medium length!"]  # prompts of different lengths


def pipeline(**settings) -> Pipeline:
    settings.setdefault("generation", GREEDY)
    return tiny_pipeline(**settings)


def greedy_request(text: str, context=()) -> SpeechRequest:
    return SpeechRequest(text, 0, SpeechParams(0.0, 50, 1.0, FRAMES, seed=0), context)


def speak_rows(speaker, requests) -> list[tuple[np.ndarray, np.ndarray]]:
    """``speak_batch`` -> per row (codes [K,F], samples), checking rows come in row order at each step."""
    chunks = [[] for _ in requests]
    for row, chunk in speaker.speak_batch(requests):
        chunks[row].append(chunk)
    return [(np.concatenate([c.codes for c in row], axis=1), np.concatenate([c.samples for c in row]))
            for row in chunks]


@pytest.fixture(scope="module")
def tiny():
    """One tiny-preset pipeline (no optimizer) shared by the stage-level tests."""
    with pipeline() as p:
        yield p


def test_ragged_batch_gives_each_row_its_codes_spoken_alone(tiny):
    earlier = Segment(1, "Earlier words.", np.random.default_rng(0).integers(1, 2048, (32, 3)))
    requests = [greedy_request(TEXTS[0]), greedy_request(TEXTS[1]), greedy_request(TEXTS[2], (earlier,))]
    speaker = tiny.stage("tts")
    lengths = {len(speaker._prompt(r)) for r in requests}
    assert len(lengths) == 3  # really ragged
    rows = speak_rows(speaker, requests)
    for request, (codes, samples) in zip(requests, rows):
        alone = list(speaker.speak(request))
        want_codes = np.concatenate([c.codes for c in alone], axis=1)
        assert codes.shape == (32, FRAMES) and np.array_equal(codes, want_codes)
        # the batched streaming decoder sums in another order: audio equal to float tolerance
        np.testing.assert_allclose(samples, np.concatenate([c.samples for c in alone]), atol=1e-4, rtol=0)
    assert len({r[0].tobytes() for r in rows}) == 3


def forced_end_engines(model, end: list[int | None]):
    """The PyTorch engines of ``model`` (caches for len(end) rows), with the logits of row r pushed to the
    end-of-speech frame from its frame ``end[r]`` on (:class:`forced_engines.Forcing`; the model still
    runs). Rows are the session's slots, which ``speak_batch`` fills in request order."""
    from csm_pytorch.engines import TorchCsmEngines

    return Forcing(TorchCsmEngines(model, batch_size=len(end)), end, code=0)


def test_a_row_that_ended_is_no_longer_yielded(tiny):
    speaker = tiny.stage("tts")
    requests = [greedy_request(t) for t in TEXTS]
    alone = [np.concatenate([c.codes for c in speaker.speak(r)], axis=1) for r in requests]
    plain = speaker.engines
    try:
        speaker.engines = forced_end_engines(plain.model, [2, None, 4])
        steps = [row for row, _ in speaker.speak_batch(requests)]
        rows = speak_rows(speaker, requests)
    finally:
        speaker.engines = plain
    assert steps == [0, 1, 2, 0, 1, 2, 1, 2, 1, 2, 1, 1]  # row 0 ends at frame 2, row 2 at 4, row 1 runs on
    for (codes, samples), want, frames in zip(rows, alone, (2, FRAMES, 4)):
        assert codes.shape == (32, frames) and np.array_equal(codes, want[:, :frames])
        assert samples.shape == (frames * 1920,)


def test_rows_keep_their_own_params_and_seed_and_later_rows_join_as_rows_free_up():
    """Requests of one batch may differ in sampling parameters, seed and max_frames: each row samples with
    its own, so every row's codes equal speaking it alone, under greedy decoding and seeded sampling.
    With max_batch=2, the third request joins at the frame boundary after the shortest row ends."""
    requests = [
        SpeechRequest(TEXTS[0], 0, SpeechParams(0.9, 20, 1.0, FRAMES - 3, seed=11)),
        SpeechRequest(TEXTS[1], 0, SpeechParams(0.0, 50, 1.0, FRAMES + 2, seed=0)),
        SpeechRequest(TEXTS[2], 0, SpeechParams(1.3, 50, 0.9, FRAMES, seed=12)),
    ]
    with pipeline(optimizers=["batched-generation"], options={"batched-generation": {"max_batch": 2}}) as p:
        speaker = p.stage("tts")
        steps = [row for row, _ in speaker.speak_batch(requests)]
        rows = speak_rows(speaker, requests)
        alone = [list(speaker.speak(r)) for r in requests]
        other_seed = list(speaker.speak(SpeechRequest(TEXTS[0], 0, SpeechParams(0.9, 20, 1.0, FRAMES - 3, seed=99))))
    # rows 0 and 1 start; row 0 ends after its 3 frames and row 2 takes its slot at the next frame; row 1
    # ends after 8 frames (the 5th beside row 2), row 2 after its 6
    assert steps == [0, 1] * 3 + [1, 2] * 5 + [2]
    for request, (codes, samples), chunks in zip(requests, rows, alone):
        want = np.concatenate([c.codes for c in chunks], axis=1)
        assert codes.shape == (32, request.params.max_frames) and np.array_equal(codes, want)
        np.testing.assert_allclose(samples, np.concatenate([c.samples for c in chunks]), atol=1e-4, rtol=0)
    assert not np.array_equal(rows[0][0], np.concatenate([c.codes for c in other_seed], axis=1))  # seeds matter


def test_pipelined_batches_give_the_same_codes_and_audio_one_step_later():
    """With pipelined-decoding, a step returns the audio of the frames the step before it made (decoded on
    a worker thread while the next frames are generated): every row's codes are those of the in-line
    session, rows joining as others end included, and its audio too, to the float rounding of decoding
    it beside other rows (which rows share a decode call can differ by a step)."""
    requests = [
        SpeechRequest(TEXTS[0], 0, SpeechParams(0.9, 20, 1.0, FRAMES - 3, seed=11)),
        SpeechRequest(TEXTS[1], 0, SpeechParams(0.0, 50, 1.0, FRAMES + 2, seed=0)),
        SpeechRequest(TEXTS[2], 0, SpeechParams(1.3, 50, 0.9, FRAMES, seed=12)),
    ]
    options = {"batched-generation": {"max_batch": 2}}
    with pipeline(optimizers=["batched-generation"], options=options) as p:
        inline = speak_rows(p.stage("tts"), requests)
    with pipeline(optimizers=["batched-generation", "pipelined-decoding"], options=options) as p:
        speaker = p.stage("tts")
        session = speaker.open_session(2)
        first = session.add(requests[1])
        assert session.step() == {}  # the first frame is being made; its audio comes with the next step
        assert list(session.step()) == [first]
        session.remove(first)
        assert len(session) == 0 and session.step() == {}  # a removed row's late frame is dropped
        session.close()
        pipelined = speak_rows(speaker, requests)
    for (codes, samples), (want_codes, want_samples) in zip(pipelined, inline):
        assert np.array_equal(codes, want_codes)
        np.testing.assert_allclose(samples, want_samples, atol=1e-4, rtol=0)


def test_optimizer_switches_the_path_but_not_the_codes():
    with pipeline() as p:
        sequential = speak_many(p, TEXTS, context=())
    with pipeline(optimizers=["batched-generation"], options={"batched-generation": {"max_batch": 2}}) as p:
        batched = speak_many(p, TEXTS, context=())
    assert [t.path for t in sequential] == ["sequential"] * 3
    assert [t.path for t in batched] == ["batched"] * 3
    assert [t.batch_size for t in batched] == [2, 2, 1]  # max_batch=2: two batches
    assert batched[0].to_dict()["path"] == "batched"
    for seq, bat in zip(sequential, batched):
        assert np.array_equal(seq.reply_codes, bat.reply_codes)
        assert bat.metrics.frames == FRAMES and bat.audio.sample_rate == 24000
        np.testing.assert_allclose(seq.audio.samples, bat.audio.samples, atol=1e-4, rtol=0)
        assert bat.metrics.stages[0].stage == "tts" and bat.metrics.time_to_first_audio_s is not None


def test_bad_inputs_are_clear_errors(tiny):
    speaker = tiny.stage("tts")
    with pytest.raises(CsmError, match="no requests given"):
        list(speaker.speak_batch([]))
    from csm_pytorch.cuda_graphs import cuda_graph_engines

    plain = speaker.engines
    try:  # static-step engines (CUDA graphs, here without capture) would replay with stale caches if grown
        speaker.engines = cuda_graph_engines(plain.model, 1, capture=False)
        with pytest.raises(CsmError, match=r"GraphedBackbone\) run a fixed batch of 1 .*cuda_graphs = false"):
            list(speaker.speak_batch([greedy_request("One."), greedy_request("Two.")]))
    finally:
        speaker.engines = plain
    with pytest.raises(CsmError, match="speak_batch: request 1: the text to speak is empty"):
        list(speaker.speak_batch([greedy_request("One."), greedy_request(" ")]))
    with pytest.raises(CsmError, match=r"no texts given"):
        speak_many(tiny, [])
    with pytest.raises(CsmError, match=r"texts\[1\]='  ' must be a non-empty string"):
        speak_many(tiny, ["fine", "  "])
    with pytest.raises(ConfigError, match="max_batch"):
        pipeline(optimizers=["batched-generation"], options={"batched-generation": {"max_batch": 0}})
    with pytest.raises(ConfigError, match="max_batch"):  # more rows than the batch may hold
        pipeline(optimizers=["batched-generation"], options={"batched-generation": {"max_batch": 65}})


@pytest.mark.slow  # exports the tiny ONNX graphs (tens of seconds on a busy 2-core machine)
def test_a_backend_that_cannot_batch_is_named_with_what_to_do(tmp_path):
    pytest.importorskip("onnxruntime")
    with tiny_pipeline("onnxruntime", backend="onnxruntime", cache_dir=tmp_path, generation=GREEDY,
                       optimizers=["batched-generation"]) as p:
        cannot = r"the 'onnxruntime' backend's csm engines \(OnnxCsmEngines.*fixed batch of 1.*'pytorch'"
        with pytest.raises(CsmError, match=cannot):
            speak_many(p, TEXTS[:2], context=())
        assert speak_many(p, TEXTS[:1], context=())[0].metrics.frames == FRAMES  # one row still runs


def context_keys(request: SpeechRequest) -> list[tuple]:
    """A request's context in comparable form (Segment == Segment is ambiguous with numpy codes)."""
    return [(s.speaker, s.text, None if s.codes is None else s.codes.tobytes()) for s in request.context]


@pytest.mark.slow  # the tiny CSM and Mimi, a voice profile, speaking 2 texts twice (~20 s on 2 busy cores)
def test_one_by_one_and_batched_build_the_same_requests_with_the_voice_profile(tmp_path, write_wav, monkeypatch):
    """One speaking path: the voice profile is pinned and the context policy applied in batches too."""
    clip = write_wav("voice.wav", tone(220.0, 0.5, 16000), 16000)
    settings = Settings(
        models={"preset": "tiny"}, device="cpu", cache_dir=tmp_path / "cache", generation=GREEDY,
        voice={"audio": str(clip), "text": "A reference clip."}, optimizers=["batched-generation"],
    )
    plugins = Plugins.from_environment({"CSM_LOAD_PLUGINS": "model,pytorch,optimizers"})
    earlier = Segment(1, "Earlier words.", np.random.default_rng(0).integers(1, 2048, (32, 3)))
    with Pipeline(settings, plugins) as p:
        assert p.settings.generation.max_batch == 4  # set by the optimizer
        speaker = p.stage("tts")
        one, batched = [], []
        speak, speak_batch = speaker.speak, speaker.speak_batch
        monkeypatch.setattr(speaker, "speak", lambda request: (one.append(request), speak(request))[1])
        monkeypatch.setattr(speaker, "speak_batch", lambda requests: (batched.extend(requests), speak_batch(requests))[1])
        alone = [p.speak(text, context=(earlier,)) for text in TEXTS[:2]]
        together = speak_many(p, TEXTS[:2], context=(earlier,))
        profile = p.voice_profile()
    assert [t.path for t in together] == ["batched"] * 2 and len(one) == 2 and len(batched) == 2
    for single, row in zip(one, batched):
        assert (row.text, row.speaker, row.params) == (single.text, single.speaker, single.params)
        assert context_keys(row) == context_keys(single)
        assert context_keys(row)[0] == (profile.speaker, "A reference clip.", profile.codes.tobytes())  # pinned first
        assert context_keys(row)[1:] == [(1, "Earlier words.", earlier.codes.tobytes())]
    for single, row in zip(alone, together):
        assert np.array_equal(single.reply_codes, row.reply_codes)  # greedy: the same speech


def test_engines_say_which_batches_they_can_run(tiny):
    from csm_core.generation.row_engines import BatchingUnsupported, OneRow, row_engines
    from csm_pytorch.cuda_graphs import cuda_graph_engines
    from csm_pytorch.engines import TorchCsmEngines

    model = tiny.stage("tts").engines.model
    try:
        engines = TorchCsmEngines(model, batch_size=2)
        assert engines.batch_size == 2 and engines.for_batch(1) is engines and engines.for_batch(2) is engines
        grown = engines.for_batch(3)
        assert isinstance(grown, TorchCsmEngines) and grown is not engines and grown.batch_size == 3
        wrapped = TorchCsmEngines(model, batch_size=1)  # a replaced backbone would not survive re-allocation
        wrapped.backbone = Forcing(TorchCsmEngines(model, batch_size=1), [None], code=0).backbone
        assert wrapped.for_batch(1) is wrapped and wrapped.for_batch(2) is None
        graphed = cuda_graph_engines(model, 1, capture=False)  # captured graphs hold the old caches
        assert graphed.batch_size == 1 and graphed.for_batch(1) is graphed and graphed.for_batch(2) is None
        # a session never bypasses a replaced or captured backbone through the eager per-row calls
        assert engines.per_row_calls and not wrapped.per_row_calls and not graphed.per_row_calls
        assert isinstance(row_engines(graphed, 1), OneRow) and isinstance(row_engines(wrapped, 1), OneRow)
        with pytest.raises(BatchingUnsupported, match="one request at a time"):
            row_engines(graphed, 2)
        eager = TorchCsmEngines(model, batch_size=2)
        assert row_engines(eager, 2) is eager
    finally:
        TorchCsmEngines(model)  # the shared model's caches back to one row, as the tts stage made them


def test_speaking_in_batches_needs_the_batch_capability():
    from csm_core import hookimpl
    from csm_core.records import Backend, StageImpl
    from csm_core.stages import SpeechChunk

    class OneByOne:  # speaks, claims no capability
        sample_rate = 24000

        def speak(self, request):
            yield SpeechChunk(np.zeros(1920, dtype=np.float32), np.ones((32, 1), dtype=np.int64))

    class Stages:
        @hookimpl
        def register_backends(self, register):
            register(Backend(name="numpy", engines={}, check=lambda: None))

        @hookimpl
        def register_tts(self, register):
            register(StageImpl("plain", lambda context: OneByOne()))

    plugins = Plugins()
    plugins.register(Stages(), name="one-by-one")
    settings = Settings(backend="numpy", stages={"tts": "plain"}, generation={"max_batch": 2})
    with Pipeline(settings, plugins) as p:
        with pytest.raises(CsmError, match=r"tts stage 'plain' cannot speak in batches .*'batch' capability"):
            speak_many(p, ["One.", "Two."], context=())
    one_by_one = Settings(backend="numpy", stages={"tts": "plain"})
    with Pipeline(one_by_one, plugins) as p:
        assert [t.path for t in speak_many(p, ["One.", "Two."], context=())] == ["sequential"] * 2
