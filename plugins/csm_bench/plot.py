"""The PNG plot of a bench document: frames/s per cell, grouped by backend, with the floor as a line.

One panel per preset. Bars are the cells that ran (skipped and failed cells are named in the legend
title, beside the axes); a dashed line marks the physical floor's frames/s (:mod:`csm_bench.floor`) for each
precision used; the axis turns logarithmic when the floor is over 10x the fastest bar.
Uses matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path


def plot(document: dict, path: Path) -> Path:
    """Draw ``document`` (see :mod:`csm_bench.report`) to the PNG file ``path``; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = document["cells"]
    presets = list(dict.fromkeys(cell["preset"] for cell in cells)) or ["(no cells)"]
    widest = max([sum(c["preset"] == p and c["status"] == "ok" for c in cells) for p in presets] + [1])
    figure, axes = plt.subplots(len(presets), 1, figsize=(max(8.0, 3.0 + 0.55 * widest) + 3.5, 5.0 * len(presets)),
                                squeeze=False)
    for axis, preset in zip(axes[:, 0], presets):
        ran = [c for c in cells if c["preset"] == preset and c["status"] == "ok"]
        not_run = [c for c in cells if c["preset"] == preset and c["status"] != "ok"]
        backends = list(dict.fromkeys(c["backend"] for c in ran))
        colors = plt.get_cmap("tab10")
        x, ticks, labels, backends_of_bars = 0.0, [], [], []
        for index, backend in enumerate(backends):
            for cell in (c for c in ran if c["backend"] == backend):
                fps = cell["figures"]["frames_per_second"] or 0.0
                axis.bar(x, fps, color=colors(index % 10),
                         label=backend if backend not in backends_of_bars else None)
                axis.annotate(f"{fps:.1f}", (x, fps), ha="center", va="bottom", fontsize=7)
                ticks.append(x)
                labels.append(cell.get("label") or "+".join(cell["optimizers"]) or "none")
                backends_of_bars.append(backend)
                x += 1.0
            x += 0.6  # a gap between backends
        floors = {}
        for cell in ran:
            if cell.get("floor"):
                floors[cell["floor"]["precision"]] = cell["floor"]["frames_per_second"]
        for precision, fps in floors.items():
            axis.axhline(fps, linestyle="--", color="black", linewidth=1)
            axis.annotate(f"floor {precision}: {fps:.1f} frames/s", (0, fps), xytext=(4, 3),
                          textcoords="offset points", xycoords=("axes fraction", "data"), fontsize=8)
        highest = max([c["figures"]["frames_per_second"] or 0.0 for c in ran] + [12.5])
        if floors and max(floors.values()) > 10 * highest:  # keep both the bars and the floor readable
            axis.set_yscale("log")
        axis.set_xticks(ticks, labels, fontsize=8, rotation=30, ha="right")
        axis.set_ylabel("frames per second")
        axis.set_title(f"preset {preset}: CSM frames/s (higher is better; 12.5 = real time)")
        axis.axhline(12.5, color="grey", linewidth=0.8, linestyle=":")
        title = "not run:\n" + "\n".join(c['backend'] + '/' + ('+'.join(c['optimizers']) or 'none') for c in not_run) \
            if not_run else None
        if ran:  # outside the axes, on the right: the bars and the floor stay readable
            axis.legend(title=title, title_fontsize=7, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                        alignment="left")
        elif title:
            axis.text(0.5, 0.5, title, ha="center", transform=axis.transAxes, fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
    return path
