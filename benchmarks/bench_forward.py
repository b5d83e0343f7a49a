"""Forward throughput of the JAX decoder against transformers' PyTorch model, same CPU, same model
and batch, measured interleaved in one run; prints tokens/s of each and the ratio.

    python benchmarks/bench_forward.py [--layers 4 --hidden 256 --batch 8 --seq 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evomerge_jax as em  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        ckpt = em.load(Path(tmp))
    tokens = np.random.default_rng(0).integers(0, args.vocab, size=(args.batch, args.seq))
    tt = torch.tensor(tokens)

    def run_jax():
        em.logits(ckpt, tokens).block_until_ready()

    def run_torch():
        with torch.no_grad():
            model(tt)

    run_jax(), run_torch()  # compile / warm up
    times = {"jax": [], "torch": []}
    for _ in range(args.rounds):
        for name, fn in (("jax", run_jax), ("torch", run_torch)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    n_tok = args.batch * args.seq
    med = {k: float(np.median(v)) for k, v in times.items()}
    params = sum(p.numel() for p in model.parameters())
    print(f"model: llama, {params / 1e6:.1f}M params, {args.layers} layers, hidden {args.hidden}; "
          f"batch {args.batch} x seq {args.seq}; float32; median of {args.rounds}")
    for k in ("jax", "torch"):
        print(f"  {k:<6} {n_tok / med[k]:>10,.0f} tokens/s   ({med[k] * 1e3:.1f} ms per forward)")
    print(f"  ratio jax/torch: {med['torch'] / med['jax']:.2f}x")


if __name__ == "__main__":
    main()
