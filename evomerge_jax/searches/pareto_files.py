"""The files of a Pareto run: `pareto.json` (the front chosen on validation, each point's scores,
genome, merge key and recipe) and `pareto.png` (the front on validation and on test)."""

from __future__ import annotations

import json
from pathlib import Path

from ..evolve.report import pyplot
from ..fileio import atomic_write_text


def write_front(run_dir: Path, objectives, points: list[dict]) -> Path:
    path = Path(run_dir) / "pareto.json"
    atomic_write_text(path, json.dumps({"objectives": list(objectives), "points": points},
                                       indent=1) + "\n")
    return path


def plot_pareto(objectives, points: list[dict], out: Path) -> Path:
    """The first two objectives: each point on validation (line through the front) and on test,
    labelled with its index K (`evomerge export RUN OUT --point K`)."""
    plt = pyplot()
    x_name, y_name = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for split, style in (("validation", "o-"), ("test", "s--")):
        xs = [p[split][x_name] for p in points]
        ys = [p[split][y_name] for p in points]
        ax.plot(xs, ys, style, ms=5, label=f"front on {split}")
        if split == "validation":
            for p, x, y in zip(points, xs, ys):
                ax.annotate(str(p["point"]), (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
    ax.set_xlabel(f"{x_name} (score)")
    ax.set_ylabel(f"{y_name} (score)")
    extra = f" (of {len(objectives)} objectives)" if len(objectives) > 2 else ""
    ax.set_title(f"Pareto front chosen on validation{extra}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
