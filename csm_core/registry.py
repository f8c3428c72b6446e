"""What the plugins registered, by kind and name, and selection of it by name.

The registry calls each ``register_*`` hook implementation one at a time with a ``register`` callback
that knows which plugin is calling, so that a name claimed twice is an error naming both plugins, and a
plugin whose hook raises is recorded as a failure without hiding the others.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from csm_core.errors import PluginConflictError, UnknownNameError
from csm_core.plugins import LoadFailure, Plugins
from csm_core.records import Backend, Optimizer, StageImpl

T = TypeVar("T")

# stage kind -> the hook that registers its implementations
STAGE_HOOKS = {
    "tokenizer": "register_tokenizers",
    "transcriber": "register_transcribers",
    "sentiment": "register_sentiment_analyzers",
    "llm": "register_llms",
    "tts": "register_tts",
}
STAGE_KINDS = tuple(STAGE_HOOKS)

hook_log = logging.getLogger("csm.hooks")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A record and the plugin that registered it."""

    record: T
    plugin: str


@dataclass
class Registry:
    backends: dict[str, Registered[Backend]] = field(default_factory=dict)
    stages: dict[str, dict[str, Registered[StageImpl]]] = field(
        default_factory=lambda: {kind: {} for kind in STAGE_KINDS}
    )
    optimizers: dict[str, Registered[Optimizer]] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)

    @classmethod
    def collect(cls, plugins: Plugins, strict: bool = True) -> "Registry":
        """Call every ``register_*`` hook and gather the records.

        With ``strict``, a name registered by two plugins raises :class:`PluginConflictError`;
        otherwise conflicts are kept in :attr:`conflicts` (``csmctl plugins`` shows them).
        """
        registry = cls(failures=list(plugins.failures))
        registry._collect("register_backends", Backend, "backend", registry.backends, plugins)
        for kind, hook_name in STAGE_HOOKS.items():
            registry._collect(hook_name, StageImpl, f"{kind} stage", registry.stages[kind], plugins)
        registry._collect("register_optimizers", Optimizer, "optimizer", registry.optimizers, plugins)
        if strict and registry.conflicts:
            raise PluginConflictError("; ".join(registry.conflicts))
        return registry

    def _collect(self, hook_name: str, record_type: type, noun: str, into: dict, plugins: Plugins) -> None:
        caller = getattr(plugins.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order, so 'first' is the earlier plugin
            plugin_name = impl.plugin_name

            def register(record, _plugin=plugin_name):
                if not isinstance(record, record_type):
                    raise TypeError(
                        f"{hook_name}: register() takes a {record_type.__name__}, "
                        f"got {type(record).__name__} from plugin {_plugin!r}"
                    )
                if record.name in into:
                    first = into[record.name].plugin
                    self.conflicts.append(
                        f"{noun} {record.name!r} is registered by both plugin {first!r} and plugin "
                        f"{_plugin!r}: uninstall one of them, or choose the plugins to load with "
                        f"CSM_LOAD_PLUGINS"
                    )
                    return
                if plugins.trace:
                    hook_log.info("%s: plugin %r registered %s %r", hook_name, _plugin, noun, record.name)
                into[record.name] = Registered(record, _plugin)

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:
                self.failures.append(
                    LoadFailure(
                        name=plugin_name,
                        target=hook_name,
                        distribution=None,
                        error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc(),
                    )
                )

    # -- selection by name ---------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            raise UnknownNameError("backend", name, list(self.backends))
        return self.backends[name].record

    def stage(self, kind: str, name: str) -> StageImpl:
        if kind not in self.stages:
            raise UnknownNameError("stage kind", kind, list(self.stages))
        if name not in self.stages[kind]:
            raise UnknownNameError(f"{kind} stage", name, list(self.stages[kind]))
        return self.stages[kind][name].record

    def optimizer(self, name: str) -> Optimizer:
        if name not in self.optimizers:
            raise UnknownNameError("optimizer", name, list(self.optimizers))
        return self.optimizers[name].record
