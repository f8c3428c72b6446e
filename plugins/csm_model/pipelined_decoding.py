"""Frames and their audio, in order: the frame loop runs ``decoding.ahead`` frames ahead of the audio.

The backbone step of frame t+1 needs frame t's codes, not its audio, so Mimi's decoding of frame t and
the generation of frame t+1 are independent. :func:`decoded_chunks` runs the frame loop on the caller's
thread and submits each frame to a decoding worker (:mod:`csm_model.decoding_workers`): with a worker
(``ahead`` 1) frame t is decoded while frame t+1 is generated; in-line (``ahead`` 0) each frame is
decoded as it is made.

Exact: one frame loop makes the frames, and one row of the worker decodes them in order with its own
streaming state, so codes and audio are identical to in-line decoding. First audio is not delayed:
frame 0 is handed out as soon as it is decoded. Closing the generator (a cancelled request) stops the
frame loop at once, since it runs on the caller's thread, and drops the audio of frames not handed out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

def decoded_chunks(frames: Iterator[torch.Tensor], decoding) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Yield ``(frame, samples)`` for every frame ``[1,K]`` of ``frames``, decoded by ``decoding``."""
    row = decoding.open()
    pending: deque = deque()  # (frame, job) submitted, not handed out
    try:
        for index, frame in enumerate(frames):
            pending.append((frame, decoding.submit([row], frame)))
            if index == 0 or len(pending) > decoding.ahead:  # frame 0 at once: first audio is not delayed
                frame, job = pending.popleft()
                yield frame, job.result()[0]
        while pending:
            frame, job = pending.popleft()
            yield frame, job.result()[0]
    finally:
        for _, job in pending:
            job.discard()
        decoding.drop(row)
        close = getattr(frames, "close", None)
        if close is not None:
            close()
