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
    """Print the report for a terminal of the console's width (``COLUMNS`` when set).

    A name (hook, ``kind:name`` registration) is never broken inside: the table is printed when every
    name fits on its line, else each plugin as a block whose lines wrap between names only.
    """
    from rich.console import Console

    console = Console()
    if report["plugins"]:
        table = _table(report["plugins"])
        unbounded = console.options.update_width(10_000)  # measure the table's natural width, not the console's
        if console.measure(table, options=unbounded).maximum <= console.width:
            console.print(table)
        else:
            console.out("csm-multi plugins", highlight=False)
            for line in _blocks(report["plugins"], console.width):
                console.out(line, highlight=False)
    else:
        console.print("no plugins loaded (is CSM_LOAD_PLUGINS set to an empty list?)")
    for failure in report["failures"]:
        where = failure["target"] or "allowlist"
        console.print(f"[red]failed[/red] {failure['name']} ({where}): {failure['error']}", markup=True)
        if show_tracebacks and failure["traceback"]:
            console.print(failure["traceback"], markup=False, highlight=False)
    for conflict in report["conflicts"]:
        console.print(f"[red]conflict[/red] {conflict}")


def _version(plugin: dict) -> str:
    version = plugin["version"] or "-"
    if plugin["distribution"] and plugin["distribution"] != plugin["name"]:
        version = f"{plugin['distribution']} {version}"
    return version


def _table(plugins: list[dict]):
    """One row per plugin, one name per line in a cell; cells never wrap."""
    from rich.table import Table

    table = Table(title="csm-multi plugins", title_justify="left")
    for column in ("plugin", "version", "hooks", "registered"):
        table.add_column(column, no_wrap=True)
    for plugin in plugins:
        table.add_row(plugin["name"], _version(plugin), "\n".join(plugin["hooks"]), "\n".join(plugin["registered"]))
    return table


def _blocks(plugins: list[dict], width: int) -> list[str]:
    """Each plugin as a heading and indented ``hooks``/``registered`` lists that wrap between names."""
    import textwrap

    lines = []
    label_width = len("  registered  ")
    for plugin in plugins:
        lines.append(f"{plugin['name']} ({_version(plugin)})")
        for label in ("hooks", "registered"):
            names = ", ".join(plugin[label]) or "-"
            wrapped = textwrap.wrap(names, width=max(width - label_width, 20), break_long_words=False,
                                    break_on_hyphens=False)
            lines.append(f"  {label:<{label_width - 2}}{wrapped[0]}")
            lines += [" " * label_width + more for more in wrapped[1:]]
    return lines
