"""Tiny model dirs for the merge tests: a seeded base per family and variants that perturb it (so
task vectors are small and signs disagree, as in real fine-tunes), plus mergekit as a black-box
oracle run in one subprocess for many configs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tiny_models import make_model, save_model

LAYERS = 4


def make_family(root: Path, family: str, variants: int = 3, seed: int = 0,
                **overrides) -> dict[str, Path]:
    """{"base": dir, "a": dir, "b": dir, ...}: the base and `variants` perturbed copies."""
    base = make_model(family, seed=seed, num_hidden_layers=overrides.pop("num_hidden_layers", LAYERS),
                      **overrides)
    dirs = {"base": save_model(base, root / f"{family}_base")}
    for i in range(variants):
        variant = copy.deepcopy(base)
        generator = torch.Generator().manual_seed(1000 * (seed + 1) + i)
        with torch.no_grad():
            for p in variant.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        name = "abcdefgh"[i]
        dirs[name] = save_model(variant, root / f"{family}_{name}")
    return dirs


_DRIVER = """
import json, sys, traceback
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

for config, out, seed in json.loads(sys.argv[1]):
    text = open(config).read()
    try:
        options = MergeOptions(allow_crimes=True, lazy_unpickle=False, copy_tokenizer=False,
                               write_model_card=False, quiet=True, random_seed=seed)
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), out, options=options,
                  config_source=text)
    except Exception:
        open(out + ".error", "w").write(traceback.format_exc())
    open(out + ".done", "w").close()
"""


def start_mergekit(jobs: list[tuple[Path, Path]], seed: int | None = None) -> subprocess.Popen:
    """Start mergekit 0.1.5 (its public Python API, as `mergekit-yaml` calls it) on each
    (config, out_dir) in one background subprocess, so that it overlaps the caller's own work;
    `wait()` on the result. A failed job leaves `out_dir.error` with its traceback; every finished
job leaves `out_dir.done`."""
    payload = json.dumps([(str(c), str(o), seed) for c, o in jobs])
    return subprocess.Popen([sys.executable, "-c", _DRIVER, payload], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model dir as float64 numpy (bfloat16 included)."""
    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        out.update({k: v.double().numpy() for k, v in load_file(file).items()})
    return out


def max_abs_diff(ours: Path, theirs: Path) -> tuple[float, str]:
    """The largest |ours - theirs| over every tensor (and its name); names must agree."""
    a, b = tensors(ours), tensors(theirs)
    assert sorted(a) == sorted(b), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    return max((float(np.max(np.abs(a[n] - b[n]))), n) for n in a)


def config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
