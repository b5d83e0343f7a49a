"""A tiny world for the evolve tests: a base llama, sources fine-tuned from it by seeded noise (so
their task vectors are small, as real fine-tunes are), a word-level tokenizer, task files and a
config writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from evomerge_jax.tokenizer_build import build_word_tokenizer
from tiny_models import make_model, save_model

WORDS = [str(i) for i in range(10)] + ["+", "-", "=", "Q:", "A:", "so"] + [f"w{i}" for i in range(40)]


def perturbed(model, seed: int, scale: float):
    """A copy of `model` with every parameter moved by scale × (its std) × N(0, 1)."""
    clone = make_model("llama", 0)
    clone.load_state_dict(model.state_dict())
    torch.manual_seed(seed)  # after make_model, which seeds torch itself
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(scale * p.std() * torch.randn_like(p))
    return clone


def save_with_tokenizer(model, path: Path) -> Path:
    save_model(model, path)
    build_word_tokenizer(WORDS, path, vocab_size=model.config.vocab_size)
    return path


def make_world(root: Path, num_sources: int = 2, scale: float = 0.3) -> dict:
    """Models, tokenizer and two tasks on the base model's own greedy continuations: `echo`
    (exact match of 2 tokens) and `ppl` (perplexity of the same continuations)."""
    base = make_model("llama", seed=11)
    world = {"root": root, "base": save_with_tokenizer(base, root / "base"), "sources": []}
    for k in range(num_sources):
        world["sources"].append(save_with_tokenizer(perturbed(base, 100 + k, scale),
                                                    root / f"src{k}"))
    world["echo_files"] = continuation_files(base, root / "echo", sizes=(24, 16, 16), seed=5)
    return world


def continuation_records(model, n: int, seed: int, new_tokens: int = 2) -> list[dict]:
    """Random word prompts and `model`'s greedy continuation of each (the target)."""
    rng = np.random.default_rng(seed)
    words = WORDS[:16]
    records = []
    for _ in range(n):
        prompt = " ".join(rng.choice(words, size=int(rng.integers(3, 7))))
        ids = [1] + [4 + WORDS.index(w) for w in prompt.split()]
        out = []
        with torch.no_grad():  # greedy continuation, one forward per new token
            for _ in range(new_tokens):
                out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
        target = " ".join(WORDS[t - 4] if 4 <= t < 4 + len(WORDS) else f"<extra_{t}>"
                          for t in out)
        records.append({"prompt": prompt, "target": target})
    return records


def continuation_files(model, root: Path, sizes, seed: int) -> dict:
    files = {}
    for i, (split, n) in enumerate(zip(("fitness", "validation", "test"), sizes)):
        files[split] = str(write_jsonl(root / f"{split}.jsonl",
                                       continuation_records(model, n, seed * 10 + i)))
    return files


def echo_task(world, **overrides) -> dict:
    task = {"name": "echo", "type": "exact_match", "data": world["echo_files"],
            "prompt": "{prompt}", "target": "{target}", "append_eos": False, "batch_size": 8}
    return {**task, **overrides}


def ppl_task(world, **overrides) -> dict:
    task = {"name": "ppl", "type": "perplexity", "data": world["echo_files"],
            "prompt": "{prompt}", "target": "{target}", "batch_size": 8, "weight": 0.1}
    return {**task, **overrides}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_config(path: Path, world: dict, tasks: list[dict], **sections) -> Path:
    cfg = {"base_model": str(world["base"]), "models": [str(p) for p in world["sources"]],
           "strategy": {"population_size": 6, "generations": 3, "seed": 0},
           "tasks": tasks, "output_dir": str(path.parent / "run"), "baselines": False}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


POPULATION = 8


def standard_config(world: dict, path: Path, **sections) -> Path:
    """The DARE-TIES config most evolve tests share: same shapes, so compiled once per session."""
    strategy = {"population_size": POPULATION, "generations": 3, **sections.pop("strategy", {})}
    return write_config(path, world, [echo_task(world), ppl_task(world)], strategy=strategy,
                        **sections)
