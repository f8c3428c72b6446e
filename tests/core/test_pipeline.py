"""A turn through the stages, driven by small plugins of the tests' own (as llm's tests do)."""

from __future__ import annotations

import numpy as np
import pytest

from audio_signals import tone
from csm_core import hookimpl
from csm_core.audio import Audio
from csm_core.config import Settings
from csm_core.conversation import Conversation
from csm_core.errors import BackendUnavailable, CsmError, UnknownNameError
from csm_core.pipeline import AUDIO_STAGES, Pipeline
from csm_core.plugins import Plugins
from csm_core.records import Backend, Optimizer, StageImpl
from csm_core.stages import Reply, Segment, SpeechChunk

RATE = 24000
SPF = 1920  # samples per 80 ms frame


class ToneTokenizer:
    """Codes = the frame's RMS level quantized, repeated over 32 codebooks."""

    sample_rate = RATE

    def encode(self, audio):
        frames = len(audio.samples) // SPF
        rms = np.sqrt((audio.samples[: frames * SPF].reshape(frames, SPF) ** 2).mean(axis=1))
        return np.tile((rms * 1000).astype(np.int64), (32, 1))

    def decode(self, codes):
        return Audio(np.zeros(codes.shape[1] * SPF, dtype=np.float32), RATE)


class LoudnessSentiment:
    class Result:
        def __init__(self, label):
            self.label = label

        def to_dict(self):
            return {"label": self.label}

    def analyze(self, audio, codes):
        return self.Result("excited" if codes.mean() > 200 else "calm")


class EchoLlm:
    def reply(self, request):
        emotion = request.sentiment.label if request.sentiment else "neutral"
        return Reply(text=f"you said {request.transcript}", emotion=emotion)


class ToneTts:
    """One 80 ms tone frame per word; frequency from top_k so the parameters are observable."""

    sample_rate = RATE

    def __init__(self):
        self.requests = []

    def speak(self, request):
        self.requests.append(request)
        for index, _ in enumerate(request.text.split()[: request.params.max_frames]):
            yield SpeechChunk(tone(100 + 10 * request.params.top_k, SPF / RATE, RATE), np.full((32, 1), index))


class StagesPlugin:
    def __init__(self):
        self.built = []
        self.tts = ToneTts()

    def _factory(self, kind, make):
        def factory(context):
            self.built.append((kind, context.backend.name if context.backend else None))
            return make()

        return factory

    @hookimpl
    def register_backends(self, register):
        register(Backend(name="numpy", engines={"codec": lambda module, ctx: module}, check=lambda: None))

        def unavailable():
            raise BackendUnavailable("the gpu backend needs CUDA, which is missing")

        register(Backend(name="gpu", engines={"codec": lambda m, c: m}, check=unavailable))

    @hookimpl
    def register_tokenizers(self, register):
        register(StageImpl("mimi", self._factory("tokenizer", ToneTokenizer), components=("codec",)))

    @hookimpl
    def register_transcribers(self, register):
        register(StageImpl("whisper", self._factory("transcriber", lambda: type("T", (), {"transcribe": lambda s, a: "hello there"})())))

    @hookimpl
    def register_sentiment_analyzers(self, register):
        register(StageImpl("prosody", self._factory("sentiment", LoudnessSentiment)))

    @hookimpl
    def register_llms(self, register):
        register(StageImpl("transformers", self._factory("llm", EchoLlm)))

    @hookimpl
    def register_tts(self, register):
        register(StageImpl("csm", self._factory("tts", lambda: self.tts)))


@pytest.fixture
def stages():
    return StagesPlugin()


@pytest.fixture
def plugins(stages):
    plugins = Plugins()
    plugins.register(stages, name="test-stages")
    return plugins


def loud_speech():
    return Audio(tone(220, 1.0, 16000, amplitude=0.9), 16000)


def test_audio_turn_runs_every_stage_in_order(plugins, stages):
    chunks = []
    with Pipeline(Settings(backend="numpy"), plugins) as pipeline:
        turn = pipeline.turn(audio=loud_speech(), on_audio=chunks.append)
    assert [t.stage for t in turn.metrics.stages] == ["tokenizer", "transcriber", "sentiment", "llm", "tts"]
    assert turn.codes.shape == (32, 12)  # 1 s at 24 kHz = 12 whole frames
    assert turn.transcript == "hello there" and turn.sentiment.label == "excited"
    assert turn.reply.text == "you said hello there" and turn.reply.emotion == "excited"
    # the emotion map chose the sampling parameters
    assert (turn.params.temperature, turn.params.top_k) == (0.9, 35)
    assert len(chunks) == 4 and np.array_equal(np.concatenate(chunks), turn.audio.samples)
    assert turn.reply_codes.shape == (32, 4)
    metrics = turn.to_dict()["metrics"]
    assert metrics["frames"] == 4 and metrics["audio_seconds"] == pytest.approx(0.32)
    assert metrics["time_to_first_audio_s"] > 0 and metrics["real_time_factor"] > 0
    assert all(t["peak_rss_bytes"] > 0 for t in metrics["stages"])
    # what ran where: only the stages that declare components run on the backend; the others on none
    assert {t["stage"]: t["backend"] for t in metrics["stages"]} == {
        stage: "numpy" if stage == "tokenizer" else None for stage in AUDIO_STAGES
    }
    assert sorted(stages.built) == sorted([("tokenizer", "numpy"), ("transcriber", None), ("sentiment", None),
                                           ("llm", None), ("tts", None)])


def test_text_turn_skips_the_audio_stages(plugins, stages):
    with Pipeline(Settings(backend="numpy"), plugins) as pipeline:
        turn = pipeline.turn(text="good morning")
    assert [t.stage for t in turn.metrics.stages] == ["llm", "tts"]
    assert [kind for kind, _ in stages.built] == ["llm", "tts"]
    assert turn.params.top_k == 25  # 'neutral' in the default emotion map


def test_explicit_generation_settings_win_over_the_emotion_map(plugins):
    settings = Settings(backend="numpy", generation={"top_k": 3})
    with Pipeline(settings, plugins) as pipeline:
        turn = pipeline.turn(audio=loud_speech())
    assert turn.params.top_k == 3 and turn.params.temperature == 0.9  # temperature still from 'excited'


def test_unknown_emotion_keeps_generation_settings_and_is_reported(plugins):
    with Pipeline(Settings(backend="numpy"), plugins) as pipeline:
        turn = pipeline.speak("hi there", emotion="melancholic")
    assert turn.params.top_k == 50
    assert any("'melancholic' is not in the emotion map" in event for event in turn.metrics.events)


def test_conversation_grows_and_is_passed_as_context(plugins, stages, tmp_path):
    with Pipeline(Settings(backend="numpy"), plugins) as pipeline:
        pipeline.turn(audio=loud_speech())
        pipeline.turn(text="and again")
        context = stages.tts.requests[-1].context
        assert [s.speaker for s in context] == [1, 0, 1]
        assert [s.text for s in context] == ["hello there", "you said hello there", "and again"]
        assert np.array_equal(context[0].codes, pipeline.conversation.segments[0].codes)
        path = pipeline.conversation.save(tmp_path / "chat.json")
    loaded = Conversation.load(path)
    assert [s.text for s in loaded.segments] == [s.text for s in pipeline.conversation.segments]
    assert np.array_equal(loaded.segments[0].codes, pipeline.conversation.segments[0].codes)
    assert loaded.segments[3].codes.shape == (32, 4)  # "you said and again": 4 frames


def test_names_are_checked_before_anything_loads(plugins, stages):
    with Pipeline(Settings(backend="numpy", stages={"tts": "kokoro"}), plugins) as pipeline:
        with pytest.raises(UnknownNameError, match="unknown tts stage 'kokoro': choose one of csm"):
            pipeline.turn(text="hi")
    assert stages.built == []
    with pytest.raises(UnknownNameError, match="unknown backend 'onnx': choose one of gpu, numpy"):
        Pipeline(Settings(backend="onnx"), plugins).turn(audio=loud_speech())  # the tokenizer needs a backend
    assert stages.built == []


def test_unavailable_backend_is_an_error_before_loading(plugins, stages):
    with pytest.raises(BackendUnavailable, match="needs CUDA, which is missing"):
        Pipeline(Settings(backend="gpu"), plugins).turn(audio=loud_speech())
    assert stages.built == []


def test_a_device_the_backend_does_not_run_on_is_an_error_before_loading(plugins, stages):
    # the numpy test backend declares the default devices: cpu only
    with pytest.raises(CsmError, match=r"tokenizer stage 'mimi': backend 'numpy' runs on cpu, not on device 'cuda:1'"):
        Pipeline(Settings(backend="numpy", device="cuda:1"), plugins).turn(audio=loud_speech())
    assert stages.built == []
    with Pipeline(Settings(backend="numpy", device="cpu"), plugins) as pipeline:
        assert pipeline.turn(text="hi").reply is not None  # the llm and tts here declare no components


def test_backend_without_the_needed_engine(plugins, stages):
    class NoCodec:
        @hookimpl
        def register_backends(self, register):
            register(Backend(name="text-only", engines={}, check=lambda: None))

    plugins.register(NoCodec(), name="no-codec")
    settings = Settings(backend="numpy", backends={"tokenizer": "text-only"})
    with pytest.raises(CsmError, match="needs codec engines, which backend 'text-only' does not provide"):
        Pipeline(settings, plugins).turn(audio=loud_speech())


def test_a_turn_takes_audio_or_text(plugins):
    pipeline = Pipeline(Settings(backend="numpy"), plugins)
    with pytest.raises(CsmError, match="either audio or text"):
        pipeline.turn()
    with pytest.raises(CsmError, match="either audio or text"):
        pipeline.turn(audio=loud_speech(), text="both")


def test_optimizers_wrap_stages_in_config_order_and_unregister_on_close(plugins):
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        @hookimpl(wrapper=True)
        def run_stage(self, stage, call, turn):
            calls.append((self.name, "enter", stage))
            result = yield
            calls.append((self.name, "exit", stage))
            return result

    class Optimizers:
        @hookimpl
        def register_optimizers(self, register):
            for name in ("outer", "inner"):
                register(Optimizer(name=name, factory=lambda ctx, n=name: Recorder(n)))

    plugins.register(Optimizers(), name="optimizers")
    with Pipeline(Settings(backend="numpy", optimizers=["outer", "inner"]), plugins) as pipeline:
        pipeline.speak("one two")
    assert calls == [("outer", "enter", "tts"), ("inner", "enter", "tts"),
                     ("inner", "exit", "tts"), ("outer", "exit", "tts")]
    assert not any(name.startswith("optimizer:") for name, _ in plugins.manager.list_name_plugin())
    with pytest.raises(UnknownNameError, match="unknown optimizer 'turbo': choose one of inner, outer"):
        Pipeline(Settings(backend="numpy", optimizers=["turbo"]), plugins)


def test_max_frames_reaches_the_tts(plugins):
    settings = Settings(backend="numpy", generation={"max_new_frames": 2})
    with Pipeline(settings, plugins) as pipeline:
        turn = pipeline.speak("one two three four")
    assert turn.metrics.frames == 2


class BatchToneTts(ToneTts):
    """ToneTts that also speaks in batches (one row after the other) and states its position window."""

    capabilities = frozenset({"batch", "position_window"})
    max_positions = 2048

    def __init__(self):
        super().__init__()
        self.batches = []

    def count_text_tokens(self, text):
        return len(text.encode()) + 2

    def speak_batch(self, requests):
        self.batches.append(list(requests))
        for row, request in enumerate(requests):
            for chunk in self.speak(request):
                yield row, chunk


class ContractStages:
    """tts implementations that break the stage contract, and one that keeps it with capabilities."""

    def __init__(self):
        self.batch_tts = BatchToneTts()

    @hookimpl
    def register_tts(self, register):
        class Mute:  # no speak
            sample_rate = RATE

        class Liar(ToneTts):  # claims batches and a window, has neither speak_batch nor count_text_tokens
            capabilities = {"batch", "position_window"}
            max_positions = 2048

        class Boaster(ToneTts):
            capabilities = {"teleport"}

        register(StageImpl("mute", lambda context: Mute()))
        register(StageImpl("liar", lambda context: Liar()))
        register(StageImpl("boaster", lambda context: Boaster()))
        register(StageImpl("batches", lambda context: self.batch_tts))


def test_stage_objects_are_checked_against_their_contract_when_built(plugins):
    from csm_core.stages import StageContractError

    plugins.register(ContractStages(), name="contract-stages")
    cases = {
        "mute": r"the tts stage 'mute' \(Mute\) lacks speak\(\), which every tts stage has \(Speaker\)",
        "liar": r"the tts stage 'liar' \(Liar\) claims the 'batch' capability but lacks speak_batch\(\); claims the "
                r"'position_window' capability but lacks count_text_tokens\(\)",
        "boaster": r"'boaster' \(Boaster\) claims the unknown capability 'teleport' \(the tts capabilities: batch, "
                   r"position_window\)",
    }
    for name, message in cases.items():
        with Pipeline(Settings(backend="numpy", stages={"tts": name}), plugins) as pipeline:
            with pytest.raises(StageContractError, match=message):
                pipeline.stage("tts")


def test_speak_batch_builds_each_request_as_speak_does(plugins):
    from csm_core.utterances import speak_many

    contract = ContractStages()
    plugins.register(contract, name="contract-stages")
    history = (Segment(1, "earlier", np.ones((32, 3), dtype=np.int64)),)
    settings = Settings(backend="numpy", stages={"tts": "batches"}, generation={"max_batch": 2})
    with Pipeline(settings, plugins) as pipeline:
        alone = [pipeline.speak(text, emotion="happy", context=history) for text in ("one two", "three")]
        together = speak_many(pipeline, ["one two", "three", "four five six"], emotion="happy", context=history)
    tts = contract.batch_tts
    assert [len(b) for b in tts.batches] == [2, 1] and [t.path for t in together] == ["batched"] * 3
    for single, row in zip(tts.requests[:2], tts.batches[0]):
        assert (row.text, row.speaker, row.params, [(s.speaker, s.text) for s in row.context]) == (
            single.text, single.speaker, single.params, [(s.speaker, s.text) for s in single.context])
    assert tts.batches[0][0].params.top_k == 30  # the emotion map's happy entry
    for one, row in zip(alone, together):
        assert np.array_equal(one.reply_codes, row.reply_codes) and row.params == one.params
        assert [s.stage for s in row.metrics.stages] == ["tts"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "is not a csm-multi conversation file"),
        ('{"format": "csm-multi-conversation", "version": 99, "segments": []}', "has version 99"),
        ('{"format": "csm-multi-conversation", "version": 1, "segments": [{"text": "x"}]}', "malformed segment"),
    ],
)
def test_bad_conversation_files(tmp_path, content, message):
    path = tmp_path / "chat.json"
    path.write_text(content)
    with pytest.raises(CsmError, match=message):
        Conversation.load(path)
    with pytest.raises(CsmError, match="does not exist"):
        Conversation.load(tmp_path / "missing.json")
