"""The memory plan of the paper's PS setting on TPU and GPU layouts, from header-only checkpoints.

Akiba et al. (2025), section 3.1: DARE-TIES over three 7B Mistral-architecture sources (base
Mistral-7B-v0.1; shisa-gamma-7b-v1, WizardMath-7B-V1.1, Abel-7B-002: hidden 4096, 32 layers, 32
heads, 8 KV heads, MLP 14336, vocabulary 32000) in bfloat16, fitness by free generation
(configs/evolve/ps_dare_ties.yml: 512 new tokens; its batch of 1069 prompts, and smaller ones).
The stand-in model dirs hold a real config.json and a real safetensors header whose data region
is a sparse hole (no disk, no weights): `evomerge plan` reads only the headers, as it does for
real checkpoints. Prompts are assumed `--seq-len` tokens (the task files are not here).

    python benchmarks/plan_paper_setting.py [--population 128] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2,
}
SOURCES = ("Mistral-7B-v0.1", "shisa-gamma-7b-v1", "WizardMath-7B-V1.1", "Abel-7B-002")
# (label, devices, device memory, mesh POPxMODEL)
LAYOUTS = (
    ("TPU v4-8 (4 chips x 32 GiB)", 4, "32GiB", "4x1"),
    ("TPU v4-8 (4 chips x 32 GiB)", 4, "32GiB", "2x2"),
    ("TPU v4-8 (4 chips x 32 GiB)", 4, "32GiB", "1x4"),
    ("TPU v5e-8 (8 chips x 16 GiB)", 8, "16GiB", "8x1"),
    ("TPU v5e-8 (8 chips x 16 GiB)", 8, "16GiB", "2x4"),
    ("TPU v5e-8 (8 chips x 16 GiB)", 8, "16GiB", "1x8"),
    ("8 x A100/H100 80GB", 8, "80GB", "8x1"),
    ("8 x A100/H100 80GB", 8, "80GB", "4x2"),
    ("8 x A100/H100 80GB", 8, "80GB", "1x8"),
)
_HEADER_DTYPE = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}


def write_header_only(model_dir: Path, hf_config: dict, dtype: str = "bfloat16") -> Path:
    """An HF model dir whose model.safetensors has a complete, valid header and a sparse data
    region of the right size (reading a tensor would give zeros; the planner never does)."""
    from evomerge_jax.arch import hf_tensor_names
    from evomerge_jax.families import spec_from_config

    spec = spec_from_config(hf_config)
    code, itemsize = _HEADER_DTYPE[dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (short, layer) in hf_tensor_names(spec).items():
        shape = list(spec.global_shape(short) if layer is None else spec.layer_shape(short))
        size = itemsize
        for n in shape:
            size *= n
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({**hf_config, "torch_dtype": dtype}))
    with open(model_dir / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # a hole: no bytes written or stored
    return model_dir


def paper_config(root: Path, population: int, batch_size: int | None = None) -> Path:
    """configs/evolve/ps_dare_ties.yml over the stand-ins, with `population` (and batch_size)."""
    repo = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((repo / "configs/evolve/ps_dare_ties.yml").read_text())
    data["base_model"] = str(root / SOURCES[0])
    data["models"] = [str(root / s) for s in SOURCES[1:]]
    data["strategy"]["population_size"] = population
    for task in data["tasks"]:
        task["data"] = {s: str(root / "absent" / f"{s}.jsonl")
                        for s in ("fitness", "validation", "test")}
        if batch_size:
            task["batch_size"] = batch_size
    data["output_dir"] = str(root / "run")
    path = root / f"ps_dare_ties_b{batch_size or 'paper'}.yml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


def rows(root: Path, population: int, seq_len: int, batch_size: int | None):
    from evomerge_jax.evolve.config import load_config
    from evomerge_jax.parallel.memory_model import GiB
    from evomerge_jax.searches.plan import plan_memory

    cfg = load_config(paper_config(root, population, batch_size))
    for label, devices, memory, mesh in LAYOUTS:
        plan = plan_memory(cfg, devices, memory, mesh, seq_len=seq_len, check=False)
        lines = {k: max(v) for k, v in plan.lines.items()}
        cells = [lines[k] / GiB for k in ("source weights", "merge buffers (per layer)",
                                          "activations", "KV caches",
                                          "global tensors (embed, lm_head)", "logits")]
        fit = (f"{plan.chunk} per call ({plan.local}/device), {plan.calls} calls" if plan.fits
               else "does not fit")
        yield (label, mesh, plan.workloads[0].rows, *cells, plan.total / GiB, fit, plan)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=256, help="assumed prompt tokens")
    ap.add_argument("--batch", type=int, action="append",
                    help="task batch_size(s) to plan besides the config's 1069 (default 32, 8)")
    ap.add_argument("--keep", type=Path, help="write the stand-ins and configs here (default: a "
                    "temp dir), to run `evomerge plan` on them")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="plan_paper_"))
    for name in SOURCES:
        write_header_only(root / name, MISTRAL_7B)
    print(f"Paper PS setting: base + 3 Mistral-7B sources, bfloat16, dare_ties, population "
          f"{args.population}; generate task, {args.seq_len}-token prompts (assumed) + 512 new "
          f"tokens. GiB per device; peak = the larger of the layer-scan and global-map phases.")
    for batch in (None, *(args.batch or (32, 8))):
        print(f"\nbatch_size {batch or 1069}{' (the config)' if batch is None else ''}\n")
        print("| hardware | mesh pop x model | weights | merge buffers | activations | "
              "KV caches | global tensors | logits | peak | candidates per call |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for label, mesh, _, *cells, total, fit, plan in rows(root, args.population,
                                                              args.seq_len, batch):
            print(f"| {label} | {mesh} | " + " | ".join(f"{c:.1f}" for c in cells)
                  + f" | {total:.1f} | {fit} |")
    print(f"\nstand-ins and configs: {root}")


if __name__ == "__main__":
    main()
