"""The gates of docs/demo_world.md §5, measured when the zoo is built, reported beside the demo's
results.

1. Linearity: base + 0.5 x a specialist's task vector keeps most of that specialist's skill
   (merges scale task vectors, so a threshold-like vector is hard to merge).
2. Upper bound: the model fine-tuned on both data sets, on the cross task (L2 maths); the maths
   specialists alone should stay low on it, because they answer in L1.
3. A probe merge: task arithmetic with one global weight per source (maths A, L2), picked on the
   validation split and scored on test, as the searches will be. A floor for the searches.

Scores are greedy exact match (percent) on the test split unless named otherwise.
"""

from __future__ import annotations

import itertools

from ..arch import ModelSpec
from .data import TASKS, Heldout
from .probe import exact_match, merge_models, scale_task_vector

OWN_TASK = {"l2_chat": "l2_general", "math_a": "l1_math", "math_b": "l1_math",
            "unrelated": "l1_general"}


def _pct(params, spec, items) -> float:
    return round(100.0 * exact_match(params, spec, items), 1)


def compute_gates(params: dict, both: dict, spec: ModelSpec, heldout: Heldout,
                  probe_weights: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25)) -> dict:
    """params: name -> parameter pytree ('base' and every source); both: the reference model.
    probe_weights: the grid of each of the two global task-arithmetic weights."""
    test = {t: heldout.tasks[t]["test"] for t in TASKS}
    val = heldout.tasks["l2_math"]["validation"]
    models = {**params, "both": both}
    scores = {name: {t: _pct(p, spec, items) for t, items in test.items()}
              for name, p in models.items()}
    linearity = {}
    for name in params:
        if name in ("base", "unrelated"):
            continue
        task = OWN_TASK[name]
        half = _pct(scale_task_vector(params["base"], params[name], 0.5), spec, test[task])
        linearity[name] = {"task": task, "full": scores[name][task], "half": half,
                           "kept": round(half / max(scores[name][task], 1e-9), 2)}
    grid = []
    for w_math, w_l2 in itertools.product(probe_weights, probe_weights):
        merged = merge_models("task_arithmetic", params["base"],
                              [params["math_a"], params["l2_chat"]], [w_math, w_l2])
        grid.append((_pct(merged, spec, val), w_math, w_l2, merged))
    _, w_math, w_l2, merged = max(grid, key=lambda g: g[0])
    sources = [n for n in params if n != "base"]
    best_source = max(sources, key=lambda n: scores[n]["l2_math"])
    return {
        "scores": scores, "linearity": linearity,
        "bound": {"both_l2_math": scores["both"]["l2_math"],
                  "best_source": best_source, "best_source_l2_math": scores[best_source]["l2_math"],
                  "math_a_l2_math": scores["math_a"]["l2_math"]},
        "probe_task_arithmetic": {"weights": {"math_a": w_math, "l2_chat": w_l2},
                                  "l2_math": _pct(merged, spec, test["l2_math"]),
                                  "l2_general": _pct(merged, spec, test["l2_general"])},
        "pass": {"linear": all(v["kept"] >= 0.5 for v in linearity.values()),
                 "bound_at_least_50": scores["both"]["l2_math"] >= 50.0,
                 "math_alone_at_most_10": scores["math_a"]["l2_math"] <= 10.0},
    }


def format_gates(g: dict) -> str:
    lines = ["zoo gates (greedy exact match %, test split)",
             "  model        " + "".join(f"{t:>12}" for t in TASKS)]
    for name, row in g["scores"].items():
        lines.append(f"  {name:<12} " + "".join(f"{row[t]:>12.1f}" for t in TASKS))
    for name, v in g["linearity"].items():
        lines.append(f"  linearity {name}: base + 0.5 tau keeps {v['half']:.1f} of {v['full']:.1f} "
                     f"on {v['task']} ({v['kept']:.0%})")
    b, p = g["bound"], g["probe_task_arithmetic"]
    lines.append(f"  bound: both-data-sets model {b['both_l2_math']:.1f} on l2_math; best source "
                 f"{b['best_source']} {b['best_source_l2_math']:.1f}")
    lines.append(f"  probe task arithmetic (weights {p['weights']}): l2_math {p['l2_math']:.1f}, "
                 f"l2_general {p['l2_general']:.1f}")
    lines.append("  pass: " + ", ".join(f"{k}={v}" for k, v in g["pass"].items()))
    return "\n".join(lines)
