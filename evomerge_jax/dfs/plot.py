"""A picture of a DFS path, in the manner of the paper's figure of the evolved path: step on the
x axis, the layer index within its source model on the y axis, one colour per source; below, the
scale applied entering each step and the cumulative scale c_k that the export folds into weights.

Drawn on a bare `Figure` with the Agg canvas: no pyplot, so no global backend state is touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .path import LayerPath

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def plot_path(path: LayerPath, out_png: str | Path, title: str | None = None) -> Path:
    # matplotlib loads on first plot, not with the engine (it takes a second or more to import)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.arange(path.num_steps)
    sources = path.step_sources()
    names = list(path.source_names)
    source_k = np.array([names.index(name) for name, _ in sources])
    local_k = np.array([idx for _, idx in sources])
    scales = np.asarray(path.scales)
    colors = [_COLORS[i % len(_COLORS)] for i in source_k]

    fig = Figure(figsize=(min(4 + 0.18 * path.num_steps, 24), 6), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    top.plot(steps, local_k, color="0.75", linewidth=0.8, zorder=1)
    for i, name in enumerate(names):
        sel = source_k == i
        if sel.any():
            top.scatter(steps[sel], local_k[sel], s=18 + 30 * np.minimum(np.abs(scales[sel]), 3),
                        color=_COLORS[i % len(_COLORS)], label=_short(name), zorder=2)
    top.set_ylabel("layer index in its source")
    top.legend(loc="upper left", fontsize="small")
    top.set_title(title or f"DFS path: {path.num_steps} steps over "
                           f"{', '.join(_short(n) for n in names)}")

    bottom.bar(steps, scales, color=colors, width=0.8, label="scale entering the step")
    bottom.plot(steps, path.cumulative_scales(), color="black", marker=".", linewidth=1,
                label="cumulative scale c")
    bottom.axhline(0, color="0.5", linewidth=0.5)
    bottom.set_xlabel("step")
    bottom.set_ylabel("scale")
    bottom.legend(loc="upper left", fontsize="small")

    out = Path(out_png)
    fig.savefig(out, dpi=110)
    return out


def _short(name: str) -> str:
    """The last component of a source path, so that legends stay readable."""
    return Path(name).name or name
