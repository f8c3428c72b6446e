"""Conversations the server keeps between turns, in memory, bounded in count and age.

A conversation is a :class:`csm_core.conversation.Conversation` (earlier turns as CSM context) under an
id the server makes (``conv_`` + 32 hex digits). At most ``max_count`` are kept: starting one more
forgets the least recently used. One unused for ``ttl_s`` seconds is forgotten. An id that is unknown
(never made here, or forgotten) is a 404 that says so; nothing a client sends becomes a key unless the
server made it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from typing import Callable

from csm_core.conversation import Conversation
from csm_serve.errors import ApiError

log = logging.getLogger("csm.serve")
ID_PATTERN = re.compile(r"conv_[0-9a-f]{32}")


class ConversationStore:
    """Conversations by id, least recently used first; thread-safe."""

    def __init__(self, max_count: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_count, self.ttl_s, self._clock = max_count, ttl_s, clock
        self._items: OrderedDict[str, tuple[Conversation, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, (_, used) in self._items.items() if now - used > self.ttl_s]:
            del self._items[key]
            log.info("conversation %s forgotten: unused for more than %.0f s", key, self.ttl_s)

    def start(self) -> tuple[str, Conversation]:
        """A new conversation and its id (the least recently used one is forgotten when full)."""
        key = f"conv_{uuid.uuid4().hex}"
        conversation = Conversation()
        with self._lock:
            self._expire()
            while len(self._items) >= self.max_count:
                old, _ = self._items.popitem(last=False)
                log.info("conversation %s forgotten: %d conversations are kept at most", old, self.max_count)
            self._items[key] = (conversation, self._clock())
        return key, conversation

    def get(self, key: str) -> Conversation:
        """The conversation ``key`` (marked as used now); 404 when there is none."""
        with self._lock:
            self._expire()
            item = self._items.get(key) if isinstance(key, str) and ID_PATTERN.fullmatch(key) else None
            if item is None:
                raise ApiError(404, f"conversation {str(key)[:80]!r} not found: it was never started here or was "
                               f"forgotten (unused for {self.ttl_s:.0f} s, or more than {self.max_count} "
                               "conversations); leave conversation_id out to start a new one",
                               param="conversation_id", code="conversation_not_found")
            self._items[key] = (item[0], self._clock())
            self._items.move_to_end(key)
            return item[0]
