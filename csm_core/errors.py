"""The errors csm-multi raises on purpose. Each message says what was wrong and what to do."""

from __future__ import annotations


class CsmError(Exception):
    """Base class: an error whose message is meant for the user, shown without a traceback."""


class PluginConflictError(CsmError):
    """Two plugins registered the same name for the same kind of thing."""


class UnknownNameError(CsmError, LookupError):
    """A name from the config (backend, stage implementation, optimizer, preset) that nothing registered."""

    def __init__(self, kind: str, name: str, known: list[str], hint: str = ""):
        self.kind, self.name, self.known = kind, name, sorted(known)
        choices = ", ".join(self.known) if self.known else "(none registered: see `csmctl plugins`)"
        super().__init__(f"unknown {kind} {name!r}: choose one of {choices}" + (f". {hint}" if hint else ""))


class BackendUnavailable(CsmError):
    """A backend that is registered but cannot run here (a missing library, device or provider)."""


class ConfigError(CsmError):
    """A config that failed validation; the message names each field and why."""


class AudioError(CsmError, ValueError):
    """Audio that cannot be read or used: a missing file, not audio, empty, or not finite."""
