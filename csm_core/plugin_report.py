"""The report behind `csmctl plugins`: each plugin, its hooks, what it registered, what failed."""

from __future__ import annotations

from csm_core.plugins import Plugins
from csm_core.registry import Registry


def plugin_report(plugins: Plugins) -> dict:
    """A JSON-ready dict: ``plugins`` (name, distribution, version, hooks, registered), ``failures``
    (plugins that failed to load or whose hook raised) and ``conflicts`` (names claimed twice)."""
    registry = Registry.collect(plugins, strict=False)
    registered: dict[str, list[str]] = {}

    def note(kind: str, entries: dict) -> None:
        for name, entry in entries.items():
            registered.setdefault(entry.plugin, []).append(f"{kind}:{name}")

    note("backend", registry.backends)
    for kind, entries in registry.stages.items():
        note(kind, entries)
    note("optimizer", registry.optimizers)
    return {
        "plugins": [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "hooks": list(info.hooks),
                "registered": sorted(registered.get(info.name, [])),
            }
            for info in plugins.describe()
        ],
        "failures": [
            {"name": f.name, "target": f.target, "distribution": f.distribution, "error": f.error,
             "traceback": f.traceback}
            for f in registry.failures
        ],
        "conflicts": list(registry.conflicts),
    }


def render_plugin_report(report: dict, show_tracebacks: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="csm-multi plugins", title_justify="left")
    for column in ("plugin", "version", "hooks", "registered"):
        table.add_column(column, overflow="fold")
    for plugin in report["plugins"]:
        version = plugin["version"] or "-"
        if plugin["distribution"] and plugin["distribution"] != plugin["name"]:
            version = f"{plugin['distribution']} {version}"
        table.add_row(plugin["name"], version, "\n".join(plugin["hooks"]), "\n".join(plugin["registered"]))
    if report["plugins"]:
        console.print(table)
    else:
        console.print("no plugins loaded (is CSM_LOAD_PLUGINS set to an empty list?)")
    for failure in report["failures"]:
        where = failure["target"] or "allowlist"
        console.print(f"[red]failed[/red] {failure['name']} ({where}): {failure['error']}", markup=True)
        if show_tracebacks and failure["traceback"]:
            console.print(failure["traceback"], markup=False, highlight=False)
    for conflict in report["conflicts"]:
        console.print(f"[red]conflict[/red] {conflict}")
