"""Figures and tables of a run: fitness curves and a heatmap of the evolved parameters (PNG, from the
JSONL log and the best recipe), and a score table printed with rich."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (chosen before pyplot is first imported,
    so here, on first use, rather than at module import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fitness(lines: list[dict], out: Path) -> Path:
    """Best and mean fitness per generation, and the validation score of each generation's best."""
    plt = pyplot()
    gens = [line["generation"] for line in lines]
    pick = lambda key, field: [np.nan if line[key][field] is None else line[key][field]  # noqa
                               for line in lines]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(gens, pick("fitness", "best"), label="best (fitness batch)")
    ax.plot(gens, pick("fitness", "mean"), label="mean (fitness batch)")
    val = [line["generation_best"]["validation"] for line in lines]  # None: not validated
    ax.plot(gens, [np.nan if v is None else v for v in val], "o", ms=3,
            label="generation best on validation")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (weighted task score)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_recipe(recipe: dict, out: Path) -> Path:
    """One heatmap per evolved parameter: rows are layer groups, columns sources."""
    plt = pyplot()
    values = recipe["values"]
    groups, sources = recipe["groups"], [Path(s).name for s in recipe["sources"]]
    fig, axes = plt.subplots(1, len(values), figsize=(2 + 2.2 * len(values) * max(1, len(sources) / 2),
                                                      1.5 + 0.3 * len(groups)), squeeze=False)
    for ax, (name, table) in zip(axes[0], values.items()):
        data = np.asarray(table, np.float64)
        data = data[:, None] if data.ndim == 1 else data
        image = ax.imshow(data, aspect="auto", cmap="viridis")
        ax.set_title(name)
        ax.set_yticks(range(len(groups)), groups if ax is axes[0][0] else [""] * len(groups),
                      fontsize=7)
        ax.set_xticks(range(data.shape[1]), sources if data.shape[1] == len(sources) else ["all"],
                      rotation=30, fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def score_table(rows: dict[str, dict], title: str = "scores"):
    """rows: model label -> {split: {task: {metric: value}}} -> a rich Table."""
    columns = []
    for scores in rows.values():
        for split, tasks in scores.items():
            for task, metrics in tasks.items():
                for metric in metrics:
                    if metric != "score" and (split, task, metric) not in columns:
                        columns.append((split, task, metric))
    table = Table(title=title)
    table.add_column("model")
    for split, task, metric in columns:
        table.add_column(f"{split}\n{task}\n{metric}", justify="right")
    for label, scores in rows.items():
        cells = []
        for split, task, metric in columns:
            value = scores.get(split, {}).get(task, {}).get(metric)
            cells.append("-" if value is None else f"{value:.4f}")
        table.add_row(label, *cells)
    return table


def print_table(table) -> None:
    Console(width=max(100, 14 * len(table.columns))).print(table)
