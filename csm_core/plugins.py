"""The plugin manager: loads plugins from entry points, records failures, traces hook calls.

Every plugin, the in-tree ones included, is found through the ``csm_multi`` entry-point group::

    [project.entry-points.csm_multi]
    my-plugin = "my_package.plugin"

Environment:

- ``CSM_LOAD_PLUGINS``: a comma-separated allowlist of entry-point or distribution names to load.
  Unset loads every installed plugin; set but empty loads none.
- ``CSM_TRACE_HOOKS=1``: log every hook call with its arguments and result (logger ``csm.hooks``).
"""

from __future__ import annotations

import importlib.metadata as metadata
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Iterable

import pluggy

from csm_core import hookspecs
from csm_core.hookspecs import PROJECT, hookimpl

ENTRY_POINT_GROUP = PROJECT
ALLOWLIST_ENV = "CSM_LOAD_PLUGINS"
TRACE_ENV = "CSM_TRACE_HOOKS"

log = logging.getLogger("csm.plugins")


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded; shown by ``csmctl plugins``, never fatal."""

    name: str
    target: str
    distribution: str | None
    error: str
    traceback: str = ""


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: where it came from and which hooks it implements."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


class _CoreHooks:
    """The core's own implementation of ``run_stage``: do the work."""

    @hookimpl(trylast=True)
    def run_stage(self, stage, call, turn):
        return call()


def allowlist_from_env(environ: os._Environ | dict = os.environ) -> frozenset[str] | None:
    """The names in ``CSM_LOAD_PLUGINS``: ``None`` when unset (load all), empty when set to ''."""
    value = environ.get(ALLOWLIST_ENV)
    if value is None:
        return None
    return frozenset(name.strip() for name in value.split(",") if name.strip())


@dataclass
class Plugins:
    """A pluggy manager with csm-multi's hookspecs and the record of what loaded and what failed."""

    allowlist: frozenset[str] | None = None
    trace: bool = False
    manager: pluggy.PluginManager = field(init=False)
    failures: list[LoadFailure] = field(default_factory=list, init=False)
    _distributions: dict[str, metadata.Distribution | None] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.manager = pluggy.PluginManager(PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.manager.register(_CoreHooks(), name="csm_core")
        if self.trace:
            hook_log = logging.getLogger("csm.hooks")
            self.manager.trace.root.setwriter(lambda message: hook_log.info(message.rstrip()))
            self.manager.enable_tracing()

    @property
    def hook(self):
        return self.manager.hook

    @classmethod
    def from_environment(cls, environ: dict | None = None) -> "Plugins":
        """A manager configured by ``CSM_LOAD_PLUGINS`` / ``CSM_TRACE_HOOKS``, with entry points loaded."""
        environ = os.environ if environ is None else environ
        plugins = cls(
            allowlist=allowlist_from_env(environ),
            trace=environ.get(TRACE_ENV, "").strip().lower() in ("1", "true", "yes", "on"),
        )
        plugins.load_entry_points()
        return plugins

    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Import and register every plugin in the entry-point group that the allowlist admits.

        A plugin whose import raises is recorded in :attr:`failures` and skipped.
        """
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        seen: set[str] = set()
        for entry_point in entry_points:
            dist = getattr(entry_point, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            seen.update(n for n in (entry_point.name, dist_name) if n)
            if self.allowlist is not None and not ({entry_point.name, dist_name} & self.allowlist):
                continue
            if self.manager.has_plugin(entry_point.name):
                continue
            try:
                module = entry_point.load()
                self.manager.register(module, name=entry_point.name)
            except Exception as exc:  # a broken plugin must never take the CLI down
                self.failures.append(
                    LoadFailure(
                        name=entry_point.name,
                        target=entry_point.value,
                        distribution=dist_name,
                        error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc(),
                    )
                )
                log.warning("plugin %r (%s) failed to load: %s", entry_point.name, entry_point.value, exc)
                continue
            self._distributions[entry_point.name] = dist
        for missing in sorted((self.allowlist or frozenset()) - seen):
            self.failures.append(
                LoadFailure(
                    name=missing,
                    target="",
                    distribution=None,
                    error=f"{ALLOWLIST_ENV} names {missing!r}, but no installed plugin has that name; "
                    f"installed: {', '.join(sorted(seen)) or 'none'}",
                )
            )

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a module or object directly (tests and embedding applications)."""
        registered = self.manager.register(plugin, name=name)
        if registered is None:
            raise ValueError(f"plugin {name!r} is blocked or already registered")
        self._distributions.setdefault(registered, None)
        return registered

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self._distributions.pop(name, None)

    def plugin_name(self, plugin: object) -> str:
        return self.manager.get_name(plugin) or repr(plugin)

    def describe(self) -> list[PluginInfo]:
        """The loaded plugins (the core's own hooks left out), sorted by name."""
        infos = []
        for name, plugin in self.manager.list_name_plugin():
            if name == "csm_core":
                continue
            dist = self._distributions.get(name)
            hooks = tuple(sorted(h.name for h in self.manager.get_hookcallers(plugin) or ()))
            infos.append(
                PluginInfo(
                    name=name,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                    hooks=hooks,
                )
            )
        return sorted(infos, key=lambda info: info.name)

