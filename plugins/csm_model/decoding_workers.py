"""Where the ``csm`` stage decodes frames to audio: in-line, on a thread, or in a process.

Every kind offers the same calls over a :class:`~csm_model.row_decoder.RowDecoder`: ``open() -> row``
(a new row, never reused, so no late audio can reach another utterance), ``drop(row)``, ``submit(rows, codes) -> job`` (``job.result()`` gives the samples, ``job.discard()``
drops them unread) and ``close()``. Calls take effect in the order they are made, so a row's frames are
decoded in order and a drop comes after the row's last decode. ``ahead`` is how many frames the frame
loop runs ahead of the audio it hands out: 0 in-line, 1 with a worker (pipelined decoding).

- :class:`InlineDecoding`: ``submit`` decodes at once, on the caller's thread.
- :class:`ThreadDecoding`: one worker thread. On CUDA it decodes on its own stream, after an event the
  caller records at submit time (the frame's kernels are queued, not done); on a CPU it runs torch with
  :data:`DECODING_THREADS` threads. A thread overlaps only what releases the GIL: ONNX Runtime's runs,
  CUDA's queued kernels. PyTorch's CPU Mimi runs hundreds of small ops per frame, whose Python holds
  the GIL and stalls the frame loop's own Python, so for it ``auto`` picks a process.
- :class:`~csm_model.decoding_process.ProcessDecoding`: a worker process with the codec (its weights in
  shared memory), fed codes through a pipe.

:func:`open_decoding` picks the kind from ``options.csm`` (``pipelined_decoding``, ``decoding_worker``).
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from csm_core.errors import CsmError
from csm_model.row_decoder import RowDecoder

DECODING_THREADS = 1
"""torch threads of a decoding worker on a CPU. torch's thread count is per calling thread (OpenMP): with
its default (every core) on both sides, the worker's and the frame loop's parallel regions oversubscribe
the cores and both slow down; Mimi's frame is small, so one core decodes it while the loop keeps its own."""

WORKER_KINDS = ("auto", "thread", "process")


class DoneJob:
    """A job whose samples are already there (in-line decoding)."""

    def __init__(self, samples: np.ndarray) -> None:
        self.samples = samples

    def result(self) -> np.ndarray:
        return self.samples

    def discard(self) -> None:
        pass


class InlineDecoding:
    """Decodes on the caller's thread as frames are submitted (no pipelining)."""

    kind = "in-line"
    ahead = 0

    def __init__(self, codec: Any) -> None:
        self.decoder = RowDecoder(codec)
        self.rows = itertools.count()

    def open(self) -> int:
        row = next(self.rows)
        self.decoder.open(row)
        return row

    def drop(self, row: int) -> None:
        self.decoder.drop(row)

    def submit(self, rows: list[int], codes: torch.Tensor) -> DoneJob:
        return DoneJob(self.decoder.decode(rows, codes))

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "Mimi decodes in-line"


class FutureJob:
    """A thread worker's job: ``result()`` waits for the samples."""

    def __init__(self, future: Future) -> None:
        self.future = future

    def result(self) -> np.ndarray:
        return self.future.result()

    def discard(self) -> None:
        self.future.cancel()  # not started: never runs; running: its samples are dropped


class ThreadDecoding:
    """Decodes on one worker thread (its own CUDA stream on a GPU), one frame behind the frame loop."""

    kind = "thread"
    ahead = 1

    def __init__(self, codec: Any, device: str) -> None:
        self.decoder = RowDecoder(codec)
        self.rows = itertools.count()
        self.cuda = str(device).startswith("cuda")
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        threads = torch.get_num_threads() if self.cuda else DECODING_THREADS
        self.threads = threads
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="csm-mimi", initializer=torch.set_num_threads,
                                         initargs=(threads,))

    def open(self) -> int:
        row = next(self.rows)
        self.worker.submit(self.decoder.open, row)
        return row

    def drop(self, row: int) -> None:
        self.worker.submit(self.decoder.drop, row)

    def submit(self, rows: list[int], codes: torch.Tensor) -> FutureJob:
        if self.stream is None:
            return FutureJob(self.worker.submit(self.decoder.decode, list(rows), codes))
        made = torch.cuda.Event()
        made.record()  # after the frame's kernels on the caller's stream

        def decode() -> np.ndarray:
            self.stream.wait_event(made)
            codes.record_stream(self.stream)
            with torch.cuda.stream(self.stream):
                return self.decoder.decode(list(rows), codes)

        return FutureJob(self.worker.submit(decode))

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        where = "its own CUDA stream" if self.cuda else f"{self.threads} torch thread(s)"
        return f"Mimi decodes on a worker thread ({where}), one frame behind the frame loop"


def open_decoding(codec: Any, device: str, pipelined: bool, worker: str = "auto"):
    """The decoding the ``csm`` stage runs: in-line unless ``pipelined``; else ``worker`` ("thread",
    "process", or "auto": a process for PyTorch's Mimi on a CPU, a thread otherwise)."""
    if not pipelined:
        return InlineDecoding(codec)
    if worker not in WORKER_KINDS:
        raise CsmError(f"options.csm.decoding_worker = {worker!r}: use one of {', '.join(WORKER_KINDS)}")
    cpu = not str(device).startswith("cuda")
    if worker == "auto":
        from csm_model.mimi import TorchMimi

        worker = "process" if cpu and isinstance(codec, TorchMimi) else "thread"
    if worker == "thread":
        return ThreadDecoding(codec, device)
    if not cpu:
        raise CsmError(
            f"options.csm.decoding_worker = 'process' decodes on the CPU, but the stage runs on {device!r}: "
            "use 'thread' (a CUDA stream of its own) or 'auto'"
        )
    from csm_model.decoding_process import ProcessDecoding

    return ProcessDecoding(codec)
