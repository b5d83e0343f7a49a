"""The memory planner (`evomerge plan`, searches/plan.py) against XLA's own buffer assignment
of the compiled population pass, its refusals, and its promise never to read tensor data."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import yaml

from evomerge_jax.cli import main
from evomerge_jax.evolve.config import load_config
from evomerge_jax.searches.plan import plan_memory
from evomerge_jax.tokenizer_build import build_word_tokenizer

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "plan_paper_setting.py"


def _bench():
    spec = importlib.util.spec_from_file_location("plan_paper_setting", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Base + 2 sources, Llama of 3.9M parameters (15 MB each in float32: the weights are most
    of the pass's memory), a word tokenizer, a perplexity task of 8 rows."""
    root = tmp_path_factory.mktemp("plan")
    cfg = transformers.LlamaConfig(
        vocab_size=2000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    words = [f"w{i}" for i in range(1996)]
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).eval()
    paths = []
    for k in range(3):
        model = transformers.LlamaForCausalLM(cfg).eval() if k else base
        if k:
            model.load_state_dict(base.state_dict())
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * p.std() * torch.randn_like(p))
        model.save_pretrained(root / f"m{k}")
        build_word_tokenizer(words, root / f"m{k}", vocab_size=2000)
        paths.append(str(root / f"m{k}"))
    rng = np.random.default_rng(0)
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(rng.choice(words[:50], 30))}) + "\n"
                            for _ in range(8)))
    files = {s: str(data) for s in ("fitness", "validation", "test")}
    config = {"base_model": paths[0], "models": paths[1:], "merge": {"method": "dare_ties"},
              "grouping": {"layers": "per_layer"},
              "strategy": {"population_size": 4, "generations": 1},
              "tasks": [{"name": "ppl", "type": "perplexity", "prompt": "", "target": "{text}",
                         "batch_size": 8, "data": files}],
              "output_dir": str(root / "run"), "baselines": False}
    path = root / "evolve.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_plan_matches_the_compiled_pass(world):
    """The plan's peak per device against XLA's buffer assignment of the very program the
    evaluator runs (arguments + temporaries + outputs: what the device allocator must hold,
    which is what the plan promises; process RSS would add the Python heap, the compiler and
    host copies of the checkpoints). The weights line is exact; the peak within 25%."""
    from evomerge_jax.evolve.evaluate import Evaluator, population_pass
    from evomerge_jax.parallel.seeds import candidate_keys
    from evomerge_jax.searches.run import prepare

    cfg = load_config(world)
    plan = plan_memory(cfg, 1, "1GiB", "1x1")
    search, tasks, tokenizer, _ = prepare(cfg, log=lambda *_: None)
    search.load()
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=4,
                          memory_budget=str(plan.device_memory),
                          devices=jax.local_devices()[:1])
    # The evolve command plans with the same numbers.
    assert evaluator.per_candidate == plan.per_candidate.total
    assert (evaluator.chunk, evaluator.global_batch) == (plan.chunk, plan.global_batch) == (4, 4)
    assert plan.weights == evaluator.resident == sum(  # the files' data regions
        _data_bytes(Path(p) / "model.safetensors") for p in (cfg.base_model, *cfg.models))

    rows = [t.fitness_rows(0, i, 0) for i, t in enumerate(tasks)]
    _, batch = evaluator._assemble("fitness", rows)
    genomes = np.random.default_rng(0).uniform(0, 1, (4, search.num_dims)).astype(np.float32)
    keys = candidate_keys(0, 0, range(4))
    model = replace(evaluator.model, global_batch=evaluator.global_batch)
    compiled = population_pass.lower(model, evaluator.generations, evaluator.mesh,
                                     evaluator.weights, jnp.asarray(genomes), jnp.asarray(keys),
                                     batch).compile()
    used = compiled.memory_analysis()
    measured = (used.argument_size_in_bytes + used.temp_size_in_bytes
                + used.output_size_in_bytes)
    assert abs(used.argument_size_in_bytes - plan.weights) < 2**16  # + genomes, keys, batch
    assert abs(plan.total - measured) / measured < 0.25, (plan.total / 2**20, measured / 2**20)
    teacher, _ = compiled(evaluator.weights, jnp.asarray(genomes), jnp.asarray(keys), batch)
    assert np.all(np.isfinite(np.asarray(teacher[0])))  # the program runs, as planned


def _data_bytes(file: Path) -> int:
    """A safetensors file's size minus its 8-byte length and JSON header."""
    with open(file, "rb") as f:
        return file.stat().st_size - 8 - int.from_bytes(f.read(8), "little")


def _header(file: Path) -> dict:
    """A safetensors file's JSON header: tensor name -> {dtype, shape, data_offsets}."""
    with open(file, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return header


def _refusal(capsys, *args) -> str:
    capsys.readouterr()
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_refusal_names_what_to_change(world, capsys):
    # The weights fit, one candidate does not: a model axis, or bfloat16.
    err = _refusal(capsys, str(world), "--device-memory", "66MB")
    assert "ps does not fit on mesh 1x1: 4 candidate(s) per device need" in err, err
    for fix in ("a model axis of 2 (--mesh 1x2: 2 devices", "compute.dtype: bfloat16"):
        assert fix in err, err
    # Below the weights alone. The expected sizes come from the files: the weights are the three
    # safetensors data regions; a device also holds the K = 2 float32 task vectors of the layer
    # being merged (one layer's elements, read from a header); the device has 40 MB (decimal).
    cfg = load_config(world)
    weights = sum(_data_bytes(Path(p) / "model.safetensors") for p in (cfg.base_model, *cfg.models))
    header = _header(Path(cfg.base_model) / "model.safetensors")
    layer = sum(math.prod(v["shape"]) for k, v in header.items() if k.startswith("model.layers.0."))
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    err = _refusal(capsys, str(world), "--device-memory", "40MB")
    assert f"the weights ({mib(weights)}) need " in err, err
    assert f" per device, more than its {mib(40 * 10**6)}" in err, err
    # ... and one candidate's step of the layer scan: K + 1 float32 merge temporaries of a layer
    # and its activations (bounded here by one more layer)
    need = float(err.split(" need ")[1].split(" MiB")[0]) * 2**20
    assert weights + (2 + 3) * 4 * layer <= need + 2**16 < weights + (2 + 3 + 1) * 4 * layer, err
    assert "a model axis of 2" in err, err
    # A mesh that is not the device count.
    assert "pop 4 x model 1 = 4 devices" in _refusal(capsys, str(world), "--devices", "2",
                                                     "--mesh", "4x1")


def test_plan_reads_no_tensor_data(world, monkeypatch, tmp_path):
    """Tensor reads fail loudly; the plan of the paper's 7B setting (58 GB of stand-in weights
    whose data region is a sparse hole) still comes from the headers alone."""
    import safetensors

    import evomerge_jax.checkpoint as checkpoint

    opened = checkpoint.safe_open

    class HeadersOnly:
        def __init__(self, *args, **kwargs):
            self._file = opened(*args, **kwargs)

        def keys(self):
            return self._file.keys()

        def get_slice(self, name):
            real = self._file.get_slice(name)

            class Meta:  # shape and dtype only: no indexing into the data
                get_shape, get_dtype = real.get_shape, real.get_dtype
            return Meta()

        def get_tensor(self, name):
            raise AssertionError(f"the planner read tensor {name}")

    def no_load(*args, **kwargs):
        raise AssertionError("the planner loaded a checkpoint")

    monkeypatch.setattr(checkpoint, "safe_open", HeadersOnly)
    monkeypatch.setattr(safetensors, "safe_open", HeadersOnly)
    monkeypatch.setattr(checkpoint, "load", no_load)
    monkeypatch.setattr(checkpoint.TensorReader, "read", no_load)
    assert plan_memory(load_config(world), 1, "1GiB").fits
    bench = _bench()
    for name in bench.SOURCES:
        bench.write_header_only(tmp_path / name, bench.MISTRAL_7B)
    stored = sum((tmp_path / n / "model.safetensors").stat().st_size for n in bench.SOURCES)
    cfg = load_config(bench.paper_config(tmp_path, 128, batch_size=8))
    plan = plan_memory(cfg, 8, "80GB", "1x8")
    assert abs(plan.weights * 8 - stored) / stored < 0.001  # split 8 ways, headers excluded
    assert plan.fits and plan.notes and plan.workloads[0].new_tokens == 512


def test_printed_plan(world, capsys):
    capsys.readouterr()
    assert main(["plan", str(world), "--device-memory", "1GiB"]) == 0
    out = capsys.readouterr().out
    plan = plan_memory(load_config(world), 1, "1GiB")
    for line in ("source weights", "magnitude tables", "merge buffers", "activations",
                 "KV caches", "global tensors", "logits", "peak"):
        assert line in out, out
    assert "layer scan, MiB" in out  # a device under 4 GiB: MiB
    assert f"{plan.weights / 2**20:.3f}" in out and f"{plan.total / 2**20:.3f}" in out
    assert "4 candidates per call (4 per device x 1), 1 call(s) per generation of 4" in out
    assert "batches (rows x tokens): 8 x" in out


def test_gradient_plan_matches_the_compiled_step(world, tmp_path, capsys):
    """search gradient: the plan's peak (weights + one forward-and-backward step through the
    merge) against XLA's buffer assignment of the step's compiled program (within 25%); the
    printed plan shows the step; a device too small for the step is refused with what to change."""
    from evomerge_jax.evolve.gradient_loss import loss_and_grad, loss_rows, step_rows
    from evomerge_jax.searches.gradient import prepare_gradient

    data = yaml.safe_load(world.read_text())
    data.update(search="gradient", gradient={"steps": 1, "batch": 6},
                merge={"method": "task_arithmetic", "evolve": ["weight"]})
    del data["strategy"]["population_size"]
    path = tmp_path / "gradient.yml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    plan = plan_memory(cfg, 1, "1GiB", "1x1")
    search, tasks, _, grad = prepare_gradient(cfg, log=lambda *_: None)
    search.load()
    seq = max(t.seq_len for t in tasks)
    rows = loss_rows(tasks, step_rows(tasks, 0, 0, grad.batch), "fitness", seq, grad.loss)
    assert (plan.gradient.rows, plan.gradient.seq) == rows["tokens"].shape == (6, seq)
    compiled = loss_and_grad.lower(search.model, grad.loss, search.weights,
                                   search.initial_mean(), np.zeros(2, np.uint32), rows).compile()
    used = compiled.memory_analysis()
    measured = used.argument_size_in_bytes + used.temp_size_in_bytes + used.output_size_in_bytes
    assert abs(plan.total - measured) / measured < 0.25, (plan.total / 2**20, measured / 2**20)
    assert plan.total == plan.weights + plan.gradient_step  # the step is the peak here
    capsys.readouterr()
    assert main(["plan", str(path), "--device-memory", "1GiB"]) == 0
    assert "gradient step (one candidate, forward + backward through the merge, 6 x" in \
        capsys.readouterr().out
    # room for the validation pass (one candidate), not for the step
    small = f"{(plan.weights + plan.gradient_step // 2) / 1e6:.0f}MB"
    err = _refusal(capsys, str(path), "--device-memory", small)
    assert "gradient does not fit on mesh 1x1: one step (6 rows x" in err, err
    assert "a smaller gradient.batch" in err, err
