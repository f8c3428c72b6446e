"""Peak memory while a benchmark cell runs: host RSS sampled by a thread, device memory from torch.

The process's own ``ru_maxrss`` only grows, so after the first cell it says nothing about the next one.
:class:`PeakMemory` samples the current RSS (``/proc/self/statm``) every few milliseconds instead and
keeps the highest value seen between ``start`` and ``stop``; where ``/proc`` is missing (macOS) it
falls back to the process peak and says so in :attr:`host_source`. Device memory is torch's peak
allocation on CUDA, reset at ``start`` (memory that ONNX Runtime or TensorRT allocate themselves is
not in it; the report says so).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from csm_core.metrics import peak_rss_bytes

STATM = Path("/proc/self/statm")


def current_rss_bytes() -> int | None:
    """Resident memory now, in bytes, or None where ``/proc/self/statm`` does not exist."""
    try:
        resident_pages = int(STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _cuda_torch():
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch


class PeakMemory:
    """Context manager: ``with PeakMemory() as peak: ...`` then ``peak.host_bytes``, ``peak.device_bytes``.

    ``added_host_bytes`` is the peak above the RSS at ``start``: what the block itself added, comparable
    between cells of one process (the absolute peak also counts what earlier cells left loaded).
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.host_bytes: int | None = None
        self.start_host_bytes: int | None = None
        self.device_bytes: int | None = None
        self.host_source = "sampled current RSS (/proc/self/statm)" if STATM.exists() else "process peak RSS"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def added_host_bytes(self) -> int | None:
        if self.host_bytes is None or self.start_host_bytes is None:
            return None
        return self.host_bytes - self.start_host_bytes

    def _sample(self) -> None:
        value = current_rss_bytes()
        if value is not None:
            self.host_bytes = max(self.host_bytes or 0, value)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        torch = _cuda_torch()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()
        self._sample()
        self.start_host_bytes = self.host_bytes
        self._thread = threading.Thread(target=self._loop, name="csm-bench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self.host_bytes is None:
            self.host_bytes = peak_rss_bytes()
        torch = _cuda_torch()  # CUDA may have been initialised inside the block
        if torch is not None:
            self.device_bytes = int(torch.cuda.max_memory_allocated())
