"""The ``pipelined-decoding`` optimizer: identical codes and audio, in order; a closed stream stops it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from csm_model.pipelined_decoding import pipelined_chunks  # noqa: E402
from optimizer_pipelines import tiny_pipeline  # noqa: E402

GENERATION = {"temperature": 0.0, "max_new_frames": 10, "max_silent_frames": 10}


def test_codes_and_audio_are_identical_to_the_in_line_loop():
    with tiny_pipeline(generation=GENERATION) as plain:
        reference = plain.speak("Decode while the next frame is made.")
    with tiny_pipeline(generation=GENERATION, optimizers=["pipelined-decoding"]) as on:
        assert on.settings.options["csm"]["pipelined_decoding"] is True
        turn = on.speak("Decode while the next frame is made.")
    assert reference.reply_codes.shape[1] == 10
    np.testing.assert_array_equal(turn.reply_codes, reference.reply_codes)
    np.testing.assert_array_equal(turn.audio.samples, reference.audio.samples)


def test_frames_come_out_in_order_with_their_own_decoding():
    frames = (torch.full((1, 3), i) for i in range(7))
    seen = [(int(frame[0, 0]), int(audio)) for frame, audio in pipelined_chunks(frames, lambda f: f.sum(), "cpu")]
    assert seen == [(i, 3 * i) for i in range(7)]


def test_an_error_of_the_frame_loop_is_raised_in_the_callers_thread():
    def frames():
        yield torch.zeros(1, 2)
        raise RuntimeError("the frame loop broke")

    chunks = pipelined_chunks(frames(), lambda f: f, "cpu")
    next(chunks)
    with pytest.raises(RuntimeError, match="the frame loop broke"):
        next(chunks)


def test_closing_the_stream_stops_the_frame_loop_within_a_frame():
    made = []
    finished = threading.Event()

    def frames():
        try:
            for i in range(1000):
                made.append(i)
                yield torch.full((1, 1), i)
        finally:
            finished.set()

    chunks = pipelined_chunks(frames(), lambda f: f, "cpu")
    for _ in range(3):
        next(chunks)
    chunks.close()
    assert finished.wait(5), "the producer did not stop"
    # At most the queue's frames and the one in progress were made beyond the three consumed.
    assert len(made) <= 3 + 2 + 2
    time.sleep(0.1)
    assert len(made) <= 3 + 2 + 2
