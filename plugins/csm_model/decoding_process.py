"""A worker process that decodes frames to audio, so Mimi's Python never waits on the frame loop's GIL.

On a CPU, PyTorch's Mimi runs hundreds of small ops per frame, and so does the frame loop; each op's
Python holds the GIL. On two threads of one process they take turns on it: on the 2-core development
machine a Mimi thread decoding alongside doubled the frame loop's time per frame. In a process of its own
Mimi holds its own GIL and the two overlap on two cores.

:class:`ProcessDecoding` starts the process with Python's ``spawn`` (a fork of a threaded process may
deadlock) through :mod:`torch.multiprocessing`, which hands the codec's tensors over in shared memory:
the weights are not copied. The process keeps a :class:`~csm_model.row_decoder.RowDecoder`; the pipe
carries ``open``/``drop``/``decode`` messages (codes as int64 arrays) one way and samples (float32) the
other, in order. Jobs are numbered; a job discarded before its samples are read (a cancelled request)
has them dropped when they arrive.

Python's ``spawn`` imports the main module of the program in the new process: a script that starts csm
at its top level must guard it with ``if __name__ == "__main__":`` (as for any multiprocessing), or set
``options.csm.decoding_worker = "thread"``.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np
import torch

from csm_core.errors import CsmError
from csm_model.decoding_workers import DECODING_THREADS
from csm_model.row_decoder import RowDecoder

START_TIMEOUT_S = 120.0  # the new process imports torch and Mimi before it is ready


def serve(conn, codec: Any, threads: int) -> None:
    """The worker process: decode what ``conn`` asks until it closes or says ``close``."""
    torch.set_num_threads(threads)
    decoder = RowDecoder(codec)
    conn.send(("ready", None, None))
    with torch.inference_mode():
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the parent went away
                return
            op = message[0]
            if op == "open":
                decoder.open(message[1])
            elif op == "drop":
                decoder.drop(message[1])
            elif op == "decode":
                _, job, rows, codes = message
                try:
                    conn.send((job, decoder.decode(rows, torch.from_numpy(codes)), None))
                except Exception as exc:  # noqa: BLE001 - sent to the parent, raised where it reads the job
                    conn.send((job, None, f"{type(exc).__name__}: {exc}"))
            elif op == "close":
                return


class ProcessJob:
    """One submitted frame set: ``result()`` waits for its samples; ``discard()`` drops them unread."""

    def __init__(self, owner: "ProcessDecoding", number: int) -> None:
        self.owner, self.number = owner, number

    def result(self) -> np.ndarray:
        return self.owner._result(self.number)

    def discard(self) -> None:
        self.owner._discard(self.number)


def _stop(conn, process) -> None:
    try:
        conn.send(("close",))
    except (OSError, ValueError):
        pass
    process.join(timeout=5)
    if process.is_alive():
        process.terminate()
        process.join(timeout=5)
    conn.close()


class ProcessDecoding:
    """Decodes in a worker process, one frame behind the frame loop (see the module docstring)."""

    kind = "process"
    ahead = 1

    def __init__(self, codec: Any, threads: int = DECODING_THREADS) -> None:
        context = torch.multiprocessing.get_context("spawn")
        self.threads = threads
        self._conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, codec, threads), name="csm-mimi", daemon=True)
        try:
            self.process.start()
        except Exception as exc:  # noqa: BLE001 - pickling the codec, or a daemonic parent
            self._conn.close()
            raise CsmError(
                f"options.csm.decoding_worker = 'process': the codec engine ({type(codec).__name__}) could not "
                f"be moved to a decoding process ({type(exc).__name__}: {exc}); set decoding_worker = 'thread'"
            ) from None
        finally:
            child.close()
        self._stop = weakref.finalize(self, _stop, self._conn, self.process)
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self.rows = itertools.count()
        self._done: dict[int, tuple[np.ndarray | None, str | None]] = {}
        self._discarded: set[int] = set()
        self._waiting: deque[int] = deque()
        if not self._conn.poll(START_TIMEOUT_S):
            self.close()
            raise CsmError(f"the Mimi decoding process did not start within {START_TIMEOUT_S:.0f} s")
        self._receive()  # "ready"

    def _died(self) -> CsmError:
        self.process.join(timeout=5)
        return CsmError(
            f"the Mimi decoding process (pid {self.process.pid}) ended with exit code {self.process.exitcode}; "
            "its error is above in this program's output. A script that starts csm at its top level must guard "
            "it with `if __name__ == \"__main__\":` (the process is started with Python's spawn, which imports "
            "the main module); or set options.csm.decoding_worker = 'thread'"
        )

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):
            raise self._died() from None

    def _receive(self) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def open(self) -> int:
        with self._lock:
            row = next(self.rows)
            self._send(("open", row))
        return row

    def drop(self, row: int) -> None:
        with self._lock:
            self._send(("drop", row))

    def submit(self, rows: list[int], codes: torch.Tensor) -> ProcessJob:
        with self._lock:
            number = next(self._numbers)
            self._send(("decode", number, list(rows), codes.detach().to("cpu", torch.int64).numpy()))
            self._waiting.append(number)
        return ProcessJob(self, number)

    def _result(self, number: int) -> np.ndarray:
        with self._lock:
            while number not in self._done:
                if number not in self._waiting:
                    raise CsmError(f"decoding job {number} was discarded or already read")
                job, samples, error = self._receive()
                self._waiting.popleft()
                if job in self._discarded:
                    self._discarded.discard(job)
                else:
                    self._done[job] = (samples, error)
            samples, error = self._done.pop(number)
        if error is not None:
            raise CsmError(f"the Mimi decoding process failed: {error}")
        return samples

    def _discard(self, number: int) -> None:
        with self._lock:
            if self._done.pop(number, None) is None and number in self._waiting:
                self._discarded.add(number)

    def close(self) -> None:
        """Stop the process (also done when this object is collected, and at exit)."""
        self._stop()

    def describe(self) -> str:
        return (f"Mimi decodes in a worker process (pid {self.process.pid}, {self.threads} torch thread(s)), "
                "one frame behind the frame loop")
