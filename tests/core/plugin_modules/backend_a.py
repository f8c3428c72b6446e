"""Registers a backend named 'shared' (clashes with backend_b) and one named 'only-a'."""

from csm_core import hookimpl
from csm_core.records import Backend


def _ok() -> None:
    return None


@hookimpl
def register_backends(register):
    register(Backend(name="shared", engines={}, check=_ok))
    register(Backend(name="only-a", engines={}, check=_ok))
