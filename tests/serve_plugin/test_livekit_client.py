"""The real server through livekit's OpenAI TTS plugin (``livekit.plugins.openai.TTS``), as a voice agent uses it.

The plugin posts ``{"model", "input", "voice", "response_format" (mp3 unless set), "speed": 1.0,
"stream_format"}`` (plus ``instructions`` when set) to ``/v1/audio/speech``: ``stream_format`` is ``audio``
for ``tts-1``/``tts-1-hd`` and ``sse`` for every other model. It decodes what comes back with libav
(or its own WAV/PCM readers) into 24 kHz mono frames. Agents call ``synthesize()``; an agent session wraps
a TTS without streaming input (this one) in ``tts.StreamAdapter``, which speaks sentence by sentence.

pipecat's OpenAITTSService is not tested: pipecat-ai needs plain ``onnxruntime``, which cannot be installed
beside the project's ``onnxruntime-gpu`` (two distributions of one import package).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from serve_server import FRAME_SAMPLES

lk_openai = pytest.importorskip("livekit.plugins.openai", reason="livekit-plugins-openai is not installed (dev extra)")
from livekit.agents import APIConnectOptions, APIStatusError, tts  # noqa: E402

SAMPLE_RATE = 24_000
NO_RETRY = APIConnectOptions(max_retry=0, timeout=30)
# When the emitter was last flushed by its slow-audio timer, livekit ends a segment with 10 ms of silence
# of its own (tts.AudioEmitter: "a tiny empty marker") that is not server audio.
END_MARKER = SAMPLE_RATE // 100
# livekit's libav decoder opens streams with fflags=nobuffer, which loses the first packet of every
# compressed stream (576 samples of mp3, 1024 of aac, 20 ms of opus, a whole 4096-sample block of flac:
# the same with a FLAC file written by libsndfile), so these formats are checked to within this many samples.
COMPRESSED_SLACK = 4096
SPEECH = "/v1/audio/speech"


def counters(server) -> tuple[float, float, float]:
    """(speech requests answered 200, speech jobs done, speech frames generated) from /metrics."""
    return (server.metric("csm_serve_requests_total", endpoint=SPEECH, status="200"),
            server.metric("csm_serve_jobs_total", kind="speech", outcome="done"),
            server.metric("csm_serve_frames_generated_total", kind="speech"))


def counted(server, before: tuple[float, float, float], requests: int) -> int:
    """The frames the server generated since ``before``, once /metrics has counted ``requests`` more requests
    and jobs (a job is counted before its last event goes out, but the request counter only once the response
    has been sent, so a fast client can ask a moment early)."""
    deadline = time.monotonic() + 10
    while True:
        now = counters(server)
        done = now[0] - before[0] >= requests and now[1] - before[1] >= requests
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert (now[0] - before[0], now[1] - before[1]) == (requests, requests)
    return int(now[2] - before[2])


def make_tts(server, **options) -> lk_openai.TTS:
    options.setdefault("model", "tts-1")
    return lk_openai.TTS(base_url=f"{server.url}/v1", api_key=server.api_key, voice="alloy", **options)


async def synthesize(engine: lk_openai.TTS, text: str) -> tuple[list, list]:
    """Every ``SynthesizedAudio`` event of one ``synthesize(text)``, and the ``TTSMetrics`` it reported."""
    reported = []
    engine.on("metrics_collected", reported.append)
    try:
        async with engine.synthesize(text, conn_options=NO_RETRY) as stream:
            events = [event async for event in stream]
    finally:
        await engine.aclose()
    return events, reported


def samples_of(frames) -> np.ndarray:
    return np.concatenate([np.frombuffer(frame.data, dtype=np.int16) for frame in frames])


def assert_mono_24k(engine, frames):
    assert (engine.sample_rate, engine.num_channels) == (SAMPLE_RATE, 1)
    assert {(frame.sample_rate, frame.num_channels) for frame in frames} == {(SAMPLE_RATE, 1)}


def assert_exact_length(events, expected: int):
    """The server's frames, sample for sample, and livekit's own end marker only if it added one."""
    total = sum(event.frame.samples_per_channel for event in events)
    if total == expected + END_MARKER:
        last = events[-1]
        assert last.is_final and last.frame.samples_per_channel == END_MARKER
        assert not samples_of([last.frame]).any()
    else:
        assert total == expected


@pytest.mark.parametrize(
    ("model", "response_format", "instructions"),
    [
        ("tts-1", None, None),  # the plugin's default: mp3, stream_format audio
        ("tts-1", "pcm", None),
        ("tts-1", "wav", None),
        ("tts-1", "flac", None),
        ("tts-1", "opus", None),
        ("gpt-4o-mini-tts", "pcm", "Speak calmly and slowly."),  # stream_format sse, with instructions
    ],
)
def test_livekit_synthesize_speaks_the_frames_generated(server, model, response_format, instructions):
    options = {"model": model}
    if response_format:
        options["response_format"] = response_format
    if instructions:
        options["instructions"] = instructions
    engine = make_tts(server, **options)
    before = counters(server)
    events, reported = asyncio.run(synthesize(engine, "Hello there, how are you?"))
    frames = counted(server, before, requests=1)
    assert 1 <= frames <= server.max_frames

    assert events and events[-1].is_final
    assert {event.request_id for event in events} == {events[0].request_id}
    assert events[0].request_id not in ("", "unknown")  # the server's X-Request-Id reached livekit
    audio = [event.frame for event in events]
    assert_mono_24k(engine, audio)
    expected = frames * FRAME_SAMPLES  # 80 ms frames at 24 kHz
    total = sum(frame.samples_per_channel for frame in audio)
    if response_format in ("pcm", "wav"):
        assert_exact_length(events, expected)
    else:
        assert abs(total - expected) <= COMPRESSED_SLACK
    samples = samples_of(audio)
    assert np.abs(samples).max() > 0 and np.count_nonzero(samples) > len(samples) // 2

    (metrics,) = reported
    assert metrics.characters_count == len("Hello there, how are you?") and not metrics.cancelled
    assert metrics.audio_duration == pytest.approx(total / SAMPLE_RATE)
    if model == "gpt-4o-mini-tts":  # the speech.audio.done event's usage: output tokens are audio frames
        assert metrics.output_tokens == frames and metrics.input_tokens > 0


def test_livekit_stream_adapter_speaks_sentence_by_sentence(server):
    """What an agent session does with a TTS without streaming input: one request per sentence."""
    text = ["The first sentence is spoken on its own. ", "And then the second one follows it, a little later."]

    async def run():
        engine = make_tts(server, response_format="pcm")
        adapter = tts.StreamAdapter(tts=engine)
        try:
            async with adapter.stream(conn_options=NO_RETRY) as stream:
                for piece in text:
                    stream.push_text(piece)
                stream.end_input()
                return [event async for event in stream]
        finally:
            await adapter.aclose()
            await engine.aclose()

    before = counters(server)
    events = asyncio.run(run())
    frames = counted(server, before, requests=2)
    assert 2 <= frames <= 2 * server.max_frames
    audio = [event.frame for event in events]
    assert {(frame.sample_rate, frame.num_channels) for frame in audio} == {(SAMPLE_RATE, 1)}
    total = sum(frame.samples_per_channel for frame in audio)
    # at most one end marker per sentence's synthesis, and one of the adapter's own stream
    assert frames * FRAME_SAMPLES <= total <= frames * FRAME_SAMPLES + 3 * END_MARKER
    assert (total - frames * FRAME_SAMPLES) % END_MARKER == 0
    assert np.abs(samples_of(audio)).max() > 0


def test_livekit_sees_the_servers_openai_shaped_errors(server):
    engine = make_tts(server, response_format="pcm")
    engine.update_options(voice="nobody")
    before = server.metric("csm_serve_requests_total", endpoint=SPEECH, status="400")
    with pytest.raises(APIStatusError) as caught:
        asyncio.run(synthesize(engine, "Nobody speaks."))
    assert caught.value.status_code == 400 and not caught.value.retryable
    assert caught.value.body["code"] == "voice_not_found" and caught.value.body["param"] == "voice"
    deadline = time.monotonic() + 10  # counted just after the answer is sent
    while server.metric("csm_serve_requests_total", endpoint=SPEECH, status="400") == before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert server.metric("csm_serve_requests_total", endpoint=SPEECH, status="400") - before == 1
