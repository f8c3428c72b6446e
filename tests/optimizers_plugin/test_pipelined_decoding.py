"""The ``pipelined-decoding`` optimizer: identical codes and audio on either worker (a thread, a process),
in order; a closed stream stops the frame loop at once; a failing or dead worker is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from csm_core.errors import CsmError  # noqa: E402
from csm_model.decoding_process import ProcessDecoding  # noqa: E402
from csm_model.decoding_workers import InlineDecoding, ThreadDecoding, open_decoding  # noqa: E402
from csm_model.pipelined_decoding import decoded_chunks  # noqa: E402
from optimizer_pipelines import tiny_pipeline  # noqa: E402

GENERATION = {"temperature": 0.0, "max_new_frames": 10, "max_silent_frames": 10}
TEXT = "Decode while the next frame is made."


@pytest.fixture(scope="module")
def codec():
    with tiny_pipeline() as pipeline:
        yield pipeline.stage("tts").codec


@pytest.fixture(scope="module")
def process(codec):
    decoding = ProcessDecoding(codec)
    yield decoding
    decoding.close()


def frames_of(codec, count: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, codec.codebook_size, (1, codec.num_codebooks), generator=gen) for _ in range(count)]


def in_line(codec, frames) -> list[np.ndarray]:
    return [samples for _, samples in decoded_chunks(iter(frames), InlineDecoding(codec))]


@pytest.mark.parametrize("worker, options", [
    ("thread", {"pipelined-decoding": {"worker": "thread"}}),  # the optimizer's option
    ("process", {"csm": {"decoding_worker": "process"}}),  # the stage's own, which worker="auto" leaves alone
])
def test_codes_and_audio_are_identical_to_the_in_line_loop(worker, options):
    with tiny_pipeline(generation=GENERATION) as plain:
        reference = plain.speak(TEXT)
    with tiny_pipeline(generation=GENERATION, optimizers=["pipelined-decoding"], options=options) as on:
        assert on.settings.options["csm"]["pipelined_decoding"] is True
        assert on.stage("tts").decoding.kind == worker
        turn = on.speak(TEXT)
    assert reference.reply_codes.shape[1] == 10
    np.testing.assert_array_equal(turn.reply_codes, reference.reply_codes)
    np.testing.assert_array_equal(turn.audio.samples, reference.audio.samples)
    where = {"thread": "on a worker thread", "process": "in a worker process"}[worker]
    assert any(f"pipelined decoding: Mimi decodes {where}" in event for event in turn.metrics.events)


def test_auto_decodes_pytorch_mimi_on_a_cpu_in_a_process_and_the_pipeline_stops_it():
    with tiny_pipeline(optimizers=["pipelined-decoding"]) as pipeline:
        decoding = pipeline.stage("tts").decoding
        assert decoding.kind == "process" and decoding.process.is_alive()
    assert not decoding.process.is_alive()  # Pipeline.close closed the stage


def test_frames_come_out_in_order_each_utterance_with_its_own_state(codec, process):
    first, second = frames_of(codec, 6, seed=1), frames_of(codec, 4, seed=2)
    for decoding in (process, ThreadDecoding(codec, "cpu")):
        got = [(frame, samples) for frame, samples in decoded_chunks(iter(first), decoding)]
        assert [frame for frame, _ in got] == first
        np.testing.assert_array_equal(np.stack([s for _, s in got]), np.stack(in_line(codec, first)))
        again = [samples for _, samples in decoded_chunks(iter(second), decoding)]  # a fresh state
        np.testing.assert_array_equal(np.stack(again), np.stack(in_line(codec, second)))


def test_an_error_of_the_frame_loop_is_raised_in_the_callers_thread(codec, process):
    def frames():
        yield frames_of(codec, 1)[0]
        raise RuntimeError("the frame loop broke")

    chunks = decoded_chunks(frames(), process)
    next(chunks)
    with pytest.raises(RuntimeError, match="the frame loop broke"):
        next(chunks)


def test_closing_the_stream_stops_the_frame_loop_at_once_and_drops_the_late_audio(codec, process):
    made = []
    frames = frames_of(codec, 40, seed=3)

    def loop():
        for frame in frames:
            made.append(frame)
            yield frame

    chunks = decoded_chunks(loop(), process)
    for _ in range(3):
        next(chunks)
    chunks.close()
    assert len(made) == 4  # the three handed out and the one decoding ahead, nothing after the close
    # The discarded frame's audio arrives later and is dropped: the next utterance gets its own.
    after = frames_of(codec, 3, seed=4)
    got = [samples for _, samples in decoded_chunks(iter(after), process)]
    np.testing.assert_array_equal(np.stack(got), np.stack(in_line(codec, after)))


def test_a_failure_in_the_process_is_raised_with_its_message(codec, process):
    job = process.submit([10_000], frames_of(codec, 1)[0])  # a row never opened
    with pytest.raises(CsmError, match="the Mimi decoding process failed: KeyError: 10000"):
        job.result()
    got = [samples for _, samples in decoded_chunks(iter(frames_of(codec, 2)), process)]  # still serving
    assert len(got) == 2


def test_a_dead_process_is_a_clear_error(codec):
    decoding = ProcessDecoding(codec)
    decoding.process.kill()
    decoding.process.join(5)
    with pytest.raises(CsmError, match=r"decoding process \(pid \d+\) ended with exit code -9.*decoding_worker = 'thread'"):
        decoding.submit([decoding.open()], frames_of(codec, 1)[0]).result()
    decoding.close()


def test_worker_choices_and_their_errors(codec):
    assert open_decoding(codec, "cpu", pipelined=False).kind == "in-line"
    assert open_decoding(codec, "cpu", pipelined=True, worker="thread").kind == "thread"
    with pytest.raises(CsmError, match="'process' decodes on the CPU, but the stage runs on 'cuda'.*'thread'"):
        open_decoding(codec, "cuda", pipelined=True, worker="process")
    with pytest.raises(CsmError, match="decoding_worker = 'fork': use one of auto, thread, process"):
        open_decoding(codec, "cpu", pipelined=True, worker="fork")



def test_onnxruntimes_mimi_decodes_on_a_thread_and_cannot_move_to_a_process(tmp_path: Path):
    """ONNX Runtime's run releases the GIL, so ``auto`` keeps its Mimi on a thread; its session cannot be
    handed to a process, which is an error naming the engine and the way out."""
    settings = dict(backend="onnxruntime", cache_dir=tmp_path, generation=GENERATION, optimizers=["pipelined-decoding"])
    with tiny_pipeline("onnxruntime", **settings) as pipeline:
        assert pipeline.stage("tts").decoding.kind == "thread"
    with tiny_pipeline("onnxruntime", **settings, options={"csm": {"decoding_worker": "process"}}) as pipeline:
        with pytest.raises(Exception, match=r"the codec engine \(OnnxMimi\) could not be moved to a decoding process"
                                            r".*decoding_worker = 'thread'"):
            pipeline.stage("tts")


def test_a_script_without_a_main_guard_gets_the_guard_named(tmp_path: Path):
    script = tmp_path / "speak_unguarded.py"
    script.write_text(textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from optimizer_pipelines import tiny_pipeline
        with tiny_pipeline(optimizers=["pipelined-decoding"]) as pipeline:
            pipeline.stage("tts")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr and "decoding_worker = 'thread'" in done.stderr
