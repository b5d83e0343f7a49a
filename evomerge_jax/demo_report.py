"""The demo's report: the results table (terminal and markdown), results.png and the Pareto front
in percent. Pure formatting over the rows `demo.run_demo` measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.table import Table

from .evolve.report import pyplot, read_log


def pct(fraction: float) -> float:
    return round(100.0 * float(fraction), 1)


def results_table(rows: list[dict], title: str):
    table = Table(title=title)
    for col, just in [("model", "left"), ("kind", "left"), ("l2_math", "right"),
                      ("l2_general", "right"), ("layers", "right"), ("parameters", "right")]:
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(r["name"], r["kind"], f"{r['l2_math']:.1f}", f"{r['l2_general']:.1f}",
                      str(r["layers"]), f"{r['parameters']:,}")
    return table


def results_markdown(rows, meta: dict, gates_text: str, sample: dict) -> str:
    lines = ["# evomerge demo", "",
             "Greedy exact match (%) on the held-out test splits.", "",
             "| model | kind | l2_math | l2_general | layers | parameters |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['kind']} | {r['l2_math']:.1f} | {r['l2_general']:.1f} | "
              f"{r['layers']} | {r['parameters']:,} |" for r in rows]
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in meta["seconds"].items()), ""]
    lines += ["Best merge, loaded with transformers:", "",
              f"- question: `{sample['prompt']}`", f"- expected: `{sample['target']}`",
              f"- answer: `{sample['answer']}`", ""]
    front = meta.get("pareto") or []
    if front:
        lines += ["Pareto front of the PS genome (NSGA-II, the PS search's budget), chosen on "
                  "validation; `evomerge export OUT/pareto DIR --point K` writes point K:", "",
                  "| K | validation l2_math | validation l2_general | test l2_math | "
                  "test l2_general |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {p['point']} | {p['validation']['l2_math']:.1f} | "
                  f"{p['validation']['l2_general']:.1f} | {p['test']['l2_math']:.1f} | "
                  f"{p['test']['l2_general']:.1f} |" for p in front]
        lines += [""]
    lines += ["```", gates_text, "```", ""]
    return "\n".join(lines)


def pareto_front(run_dir: Path) -> list[dict]:
    """The front of a pareto run (pareto.json), its scores in percent."""
    points = json.loads((Path(run_dir) / "pareto.json").read_text())["points"]
    return [{"point": p["point"], **{split: {t: pct(v) for t, v in p[split].items()}
                                     for split in ("validation", "test")}} for p in points]


def plot_demo(rows: list[dict], logs: dict, out: Path) -> Path:
    """results.png: each model's test scores (bars, the paper's Table 1 as a chart), and each
    search's best fitness and its generation best's validation score per generation."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2),
                                      gridspec_kw={"width_ratios": [1.6, 1]})
    x = np.arange(len(rows))
    for offset, col, color in ((-0.2, "l2_math", "tab:blue"), (0.2, "l2_general", "tab:orange")):
        left.bar(x + offset, [r[col] for r in rows], 0.4, label=col, color=color)
    left.set_xticks(x, [r["name"].replace(" merge", "") for r in rows], rotation=30, ha="right")
    left.set_ylabel("greedy exact match, test (%)")
    left.set_ylim(0, 100)
    left.legend()
    left.grid(axis="y", alpha=0.3)
    for kind, path in logs.items():
        if not Path(path).is_file():
            continue
        lines = read_log(path)
        gens = [line["generation"] for line in lines]
        curve = right.plot(gens, [line["fitness"]["best"] for line in lines], label=f"{kind} best")
        right.plot(gens, [line["generation_best"]["validation"] for line in lines], "o", ms=3,
                   color=curve[0].get_color(), alpha=0.6)
    right.set_xlabel("generation")
    right.set_ylabel("fitness: l2_math + l2_general (dots: validation)")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
