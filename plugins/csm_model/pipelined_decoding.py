"""Pipelined decoding: frame t+1 is generated while frame t is decoded to audio.

The backbone step of frame t+1 needs frame t's codes, not its audio, so Mimi's decoding of frame t
and the generation of frame t+1 are independent. :func:`pipelined_chunks` runs the frame loop on a
producer thread that hands frames through a small queue; the caller's thread decodes each frame with
the codec's streaming decoder, in order, and yields the audio. Nothing waits for a frame that is not
needed: first audio comes as soon as frame 0 is decoded, as without pipelining.

Exact: the same frames (one frame loop, one thread) and the same decoding calls in the same order, so
codes and audio are identical to the in-line loop. On CUDA the producer records an event after each
frame and the decoding runs on its own stream that waits for that event, so the two overlap on the GPU
too. On a CPU the decoding thread runs torch with :data:`DECODING_THREADS` threads (the frame loop keeps
its own count). Stopping early (the caller closes the generator: a cancelled request) sets a flag the producer
reads before each frame, so at most the frame in progress is finished before it ends.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import torch

_DONE = object()
QUEUE_FRAMES = 2  # frames generated ahead of decoding at most
DECODING_THREADS = 1
"""torch threads of the decoding thread on a CPU. torch's thread count is per calling thread (OpenMP): with
its default (every core) on both sides, the two threads' parallel regions oversubscribe the cores and
both slow down; Mimi's frame is small, so one core decodes it while the frame loop keeps the others."""


def pipelined_chunks(
    frames: Iterator[torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    device: str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(frame, decode(frame))`` for every frame of ``frames``, generating ahead on a thread.

    ``frames`` is iterated on a producer thread only; ``decode`` runs on the caller's thread, in frame
    order (it may carry a streaming state). An exception of either side is raised here.
    """
    cuda = device.startswith("cuda")
    handoff: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in frames:
                event = None
                if cuda:
                    event = torch.cuda.Event()
                    event.record()
                while not stop.is_set():
                    try:
                        handoff.put((frame, event), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread and raised there
            handoff.put(exc)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="csm-frames", daemon=True)
    stream = torch.cuda.Stream(device) if cuda else None
    producer.start()
    threads = torch.get_num_threads()  # a per-thread setting: the producer's own is left as it is
    if not cuda:
        torch.set_num_threads(DECODING_THREADS)
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            frame, event = item
            if stream is not None:
                stream.wait_event(event)
                frame.record_stream(stream)
                with torch.cuda.stream(stream):
                    audio = decode(frame)
            else:
                audio = decode(frame)
            yield frame, audio
    finally:
        torch.set_num_threads(threads)
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                handoff.get_nowait()
            except queue.Empty:
                producer.join(timeout=0.05)
