"""Fixtures of the serve tests: the real server most tests share, and clients for it.

``server`` (session): an API key, a queue of 2 (so overload is easy to make), 16 frames per utterance
at most. test_serve_shutdown.py starts its own server with 200 frames, for cancellation and SIGTERM.
"""

from __future__ import annotations

import httpx
import pytest
from serve_server import SERVER_FRAMES, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    running = start_server(folder, SERVER_FRAMES, max_queue=2, retry_after_s=2)
    yield running
    running.stop()


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0, timeout=120)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as session:
        yield session
