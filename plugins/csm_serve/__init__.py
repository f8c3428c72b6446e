"""csm-multi's HTTP/WebSocket server: OpenAI-compatible speech endpoints and ``csmctl serve``."""
