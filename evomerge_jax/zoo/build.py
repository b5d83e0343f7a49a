"""The zoo recipe, its build, and the cache that skips the build when nothing changed.

Paper roles (Akiba et al. 2025): `base` is the shared pretrained model (Mistral-7B), `l2_chat`
the L2 specialist (Shisa Gamma 7B: Japanese), `math_a` and `math_b` the L1 maths specialists
(WizardMath 7B, Abel 7B), `unrelated` a fine-tune of the same base on a skill no task asks for
(evolution should learn to give it no weight). `reference/both` is not a source: it is fine-tuned
on the maths and the L2 data together, the upper bound a merge of the two is measured against.

A zoo dir holds models/<name>/ (Hugging Face Llama dirs), reference/both/,
tasks/<task>/<split>.jsonl, tokenizer/, recipe.json (the recipe and its digest) and gates.json. `build_zoo` returns at once
when recipe.json carries the digest of the recipe asked for; any change to the recipe, the seed or
the source of the world, its data or its training rebuilds the whole zoo (the fine-tunes start
from the base's training-time parameters, which the HF dirs do not keep).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..checkpoint import Checkpoint, save
from ..fileio import atomic_dir
from ..tokenizer_build import write_word_tokenizer
from . import data, train, world
from .gates import compute_gates, format_gates


@dataclass(frozen=True)
class FineTune:
    name: str
    data: tuple[str, ...]  # `data.instruction_items` kinds, mixed in equal parts
    steps: int
    lr: float


@dataclass(frozen=True)
class Recipe:
    seed: int
    quick: bool
    shape: train.ModelShape
    seq_len: int
    batch: int
    pretrain_docs: int
    pretrain: train.Schedule
    pretrain_mix: tuple[tuple[str, float], ...]
    ft_items: int
    finetunes: tuple[FineTune, ...]
    reference: FineTune
    probe_weights: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25)

    def digest(self) -> str:
        """Hash of the recipe and of the code that turns it into weights."""
        code = "".join(inspect.getsource(m) for m in (world, data, train))
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + code
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# What worked (docs/demo_world.md §6): skills latent in a base that saw them as plain text, brief
# fine-tunes at a small learning rate, so that the task vectors stay small and close to linear.
PRETRAIN_MIX = (("l1_facts", 0.15), ("l2_facts", 0.10), ("l1_stories", 0.20), ("l2_stories", 0.10),
                ("parallel", 0.13), ("qa_l1", 0.12), ("qa_l2_to_l1", 0.12), ("code_switch", 0.08))


def make_recipe(seed: int = 0, quick: bool = False) -> Recipe:
    """The demo's zoo. `quick` trains a far smaller zoo (half the width, two layers, a fifth of
    the steps) for a smoke run of the whole pipeline: its models barely learn, so its scores are
    near zero and the gates fail; only the full recipe tells the paper's story."""
    scale = 0.2 if quick else 1.0
    steps = lambda n: max(20, int(n * scale))  # noqa: E731
    # math_b differs from math_a as Abel from WizardMath: other data draws, a gentler schedule.
    finetunes = (FineTune("l2_chat", ("l2_general",), steps(200), 3e-4),
                 FineTune("math_a", ("l1_math",), steps(200), 3e-4),
                 FineTune("math_b", ("l1_math",), steps(200), 2e-4))
    if not quick:
        finetunes += (FineTune("unrelated", ("l1_reverse",), steps(150), 3e-4),)
    shape = (train.ModelShape(hidden=32, layers=2, heads=2, mlp=96, max_len=64) if quick
             else train.ModelShape(hidden=64, layers=4, heads=4, mlp=192, max_len=64))
    return Recipe(
        seed=seed, quick=quick, shape=shape,
        seq_len=32, batch=32, pretrain_docs=steps(24000),
        pretrain=train.Schedule(steps(800), 3e-3, 32, warmup=50),
        pretrain_mix=PRETRAIN_MIX, ft_items=1000 if quick else 4000, finetunes=finetunes,
        reference=FineTune("both", ("l1_math", "l2_general"), steps(600), 3e-4),
        probe_weights=(1.0,) if quick else (0.5, 0.75, 1.0, 1.25))


@dataclass(frozen=True)
class ZooPaths:
    root: Path
    base: Path
    sources: dict          # fine-tune name -> HF dir
    reference: Path        # the both-data-sets model
    tasks: Path            # tasks/<task>/<split>.jsonl
    gates: dict = field(compare=False)
    cached: bool = False


def _paths(root: Path, recipe: Recipe, gates: dict, cached: bool) -> ZooPaths:
    return ZooPaths(root, root / "models" / "base",
                    {ft.name: root / "models" / ft.name for ft in recipe.finetunes},
                    root / "reference" / recipe.reference.name, root / "tasks", gates, cached)


def _cached(root: Path, recipe: Recipe, digest: str) -> ZooPaths | None:
    try:
        stored = json.loads((root / "recipe.json").read_text())
        gates = json.loads((root / "gates.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    paths = _paths(root, recipe, gates, cached=True)
    dirs = [paths.base, paths.reference, *paths.sources.values()]
    complete = all((p / "config.json").is_file() for p in dirs)
    if stored.get("digest") != digest or not complete:
        return None
    return paths


class _Progress:
    """One rich progress bar over every training step of the zoo build (silent when off)."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            self.bar = Progress(TextColumn("zoo {task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
            self.task = self.bar.add_task("training", total=total)
            self.bar.start()

    def stage(self, name: str):
        if self.bar is not None:
            self.bar.update(self.task, description=name)

    def step(self):
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def _finetune(base_core, spec, recipe: Recipe, ft: FineTune, index: int, heldout, log,
              progress: _Progress):
    seed = recipe.seed * 1000 + index
    rng = random.Random(seed)
    items = [item for kind in ft.data for item in data.instruction_items(kind, recipe.ft_items, rng,
                                                                          heldout)]
    tokens, mask = data.encode_items(items, recipe.seq_len)
    start = time.time()
    progress.stage(ft.name)
    core, losses = train.train(base_core, spec, tokens, mask,
                               train.Schedule(ft.steps, ft.lr, recipe.batch, warmup=20), seed,
                               on_step=progress.step)
    log(f"  {ft.name}: {ft.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"({time.time() - start:.0f}s)")
    return core


def build_zoo(out_dir: str | Path, seed: int = 0, quick: bool = False, log=print,
              recipe: Recipe | None = None, progress: bool = False) -> ZooPaths:
    """Build (or find cached) the demo zoo for `seed` in `out_dir`; print the gates.
    `recipe` replaces `make_recipe(seed, quick)` (tests build a far smaller zoo); `progress`
    shows a bar over the training steps."""
    root = Path(out_dir).expanduser().resolve()  # ZooPaths are absolute: configs quote them
    recipe = recipe or make_recipe(seed, quick)
    seed = recipe.seed
    digest = recipe.digest()
    cached = _cached(root, recipe, digest)
    if cached is not None:
        log(f"zoo: cached in {root} (recipe {digest})")
        return cached
    log(f"zoo: building in {root} (seed {seed}{', quick' if recipe.quick else ''}, "
        f"recipe {digest})")
    start = time.time()
    spec, config = train.spec_for(recipe.shape), train.hf_config(recipe.shape)
    heldout = data.make_heldout()
    tokens, mask = data.pretrain_batch(dict(recipe.pretrain_mix), recipe.pretrain_docs,
                                       recipe.seq_len, random.Random(seed), heldout)
    total = (recipe.pretrain.steps + sum(ft.steps for ft in recipe.finetunes)
             + recipe.reference.steps)
    bar = _Progress(progress, total)
    bar.stage("base")
    try:
        base, losses = train.train(train.init_core(spec, jax.random.PRNGKey(seed)), spec, tokens,
                                   mask, recipe.pretrain, seed, on_step=bar.step)
        log(f"  base: {recipe.pretrain.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
            f"({time.time() - start:.0f}s)")
        cores = {ft.name: _finetune(base, spec, recipe, ft, i + 1, heldout, log, bar)
                 for i, ft in enumerate(recipe.finetunes)}
        both = _finetune(base, spec, recipe, recipe.reference, 0, heldout, log, bar)
    finally:
        bar.close()
    params = {name: train.materialize(c) for name, c in [("base", base), *cores.items()]}
    gates = compute_gates(params, train.materialize(both), spec, heldout, recipe.probe_weights)
    gates["build_seconds"] = round(time.time() - start, 1)
    with atomic_dir(root, overwrite=True) as tmp:
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        write_word_tokenizer({tok: i for i, tok in enumerate(world.VOCAB)}, tok_dir,
                             specials=world.SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>",
                             unk="<unk>", model_max_length=64)
        for name, p in params.items():
            save(Checkpoint(spec, p, config), tmp / "models" / name, tokenizer_from=tok_dir)
        save(Checkpoint(spec, train.materialize(both), config),
             tmp / "reference" / recipe.reference.name, tokenizer_from=tok_dir)
        data.export_tasks(heldout, tmp / "tasks")
        (tmp / "gates.json").write_text(json.dumps(gates, indent=2) + "\n")
        (tmp / "recipe.json").write_text(json.dumps(
            {"digest": digest, "recipe": dataclasses.asdict(recipe)}, indent=2) + "\n")
    log(format_gates(gates))
    return _paths(root, recipe, gates, cached=False)
