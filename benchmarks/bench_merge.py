"""`evomerge merge` against `mergekit-yaml` on the same TIES config and the same local models:
whole-process wall time and peak RSS of each (os.wait4 on the child), run side by side in one
invocation, then the ratios and the largest difference between the two outputs.

The models are made here with transformers (random init, float32): a Llama base (hidden 768,
12 layers, vocab 32000, about 134M parameters) and two perturbed copies.

    python benchmarks/bench_merge.py [--rounds 1] [--work bench_out/merge]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open

VENV_BIN = Path(sys.executable).parent
CONFIG = """merge_method: ties
base_model: {root}/base
models:
  - model: {root}/a
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {root}/b
    parameters: {{weight: 0.4, density: 0.7}}
dtype: float32
"""


def make_models(root: Path, args) -> int:
    """Base + two perturbed copies; returns the parameter count. Reuses dirs from a previous run."""
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    count = sum(p.numel() for p in model.parameters())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for i, name in enumerate(("base", "a", "b")):
        if (root / name / "model.safetensors").exists():
            continue
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for key, p in model.state_dict().items():
                p.copy_(base[key] + (0.01 * torch.randn(p.shape, generator=generator) if i else 0))
        model.save_pretrained(root / name)
    return count


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 2**20  # Linux reports KiB


def max_diff(a: Path, b: Path) -> float:
    def tensors(path):
        out = {}
        for file in path.glob("*.safetensors"):
            with safe_open(str(file), framework="np") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
        return out
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    return max(float(np.max(np.abs(ta[k] - tb[k]))) for k in ta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("bench_out/merge"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    root = args.work.resolve()
    root.mkdir(parents=True, exist_ok=True)
    count = make_models(root, args)
    (root / "ties.yml").write_text(CONFIG.format(root=root))
    outs = {"mergekit-yaml": root / "out_mergekit", "evomerge merge": root / "out_evomerge"}
    tools = {
        "mergekit-yaml": [str(VENV_BIN / "mergekit-yaml"), str(root / "ties.yml"),
                          str(outs["mergekit-yaml"]), "--no-copy-tokenizer", "--quiet"],
        "evomerge merge": [str(VENV_BIN / "evomerge"), "merge", str(root / "ties.yml"),
                           str(outs["evomerge merge"]), "--quiet"],
    }
    results = {name: [] for name in tools}
    for _ in range(args.rounds):
        for name, cmd in tools.items():  # side by side, alternating
            shutil.rmtree(outs[name], ignore_errors=True)
            results[name].append(measure(cmd))
    print(f"TIES merge of 3 Llama models, {count / 1e6:.0f}M parameters each, float32, "
          f"{os.cpu_count()} CPUs, {args.rounds} round(s); best wall time, its peak RSS")
    best = {name: min(runs) for name, runs in results.items()}
    for name, (wall, rss) in best.items():
        print(f"  {name:<15} wall {wall:7.1f} s   peak RSS {rss:6.2f} GiB")
    (w_mk, r_mk), (w_ev, r_ev) = best["mergekit-yaml"], best["evomerge merge"]
    print(f"  evomerge / mergekit: wall x{w_ev / w_mk:.2f}, peak RSS x{r_ev / r_mk:.2f}")
    print(f"  max |evomerge - mergekit| over all tensors: "
          f"{max_diff(root / 'out_evomerge', root / 'out_mergekit'):.3g}")


if __name__ == "__main__":
    main()
