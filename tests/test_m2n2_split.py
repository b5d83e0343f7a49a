"""M2N2's split at a parameter index (`m2n2.split: parameter`, ps/split_genome.py) and its
gaussian mutation. A split recipe's logits in the population pass against transformers running
the model spliced by hand (each tensor element from the left or right recipe's merge, by its
flattened index); its ends against the plain recipes; its export against the same splice; the
groups' shares by hand; mutation's rate and scale on many draws."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
import yaml
from evolve_world import echo_task, write_config

from evomerge_jax.arch import hf_tensor_names
from evomerge_jax.checkpoint import TensorReader
from evomerge_jax.evolve import m2n2
from evomerge_jax.evolve.config import load_config
from evomerge_jax.ps.export import merged_tensors
from evomerge_jax.ps.split_genome import decode_boundary, group_fractions, tensor_spans
from evomerge_jax.searches.m2n2 import breed, prepare_m2n2

# Left: source 0 at weight 1 in every group; right: source 1, both with lambda-free
# task_arithmetic; 3 layers, attention and MLP sides apart (6 layer groups + the globals' own).
GROUPING = {"layers": "per_layer", "globals": "own", "split_attn_mlp": True}


@pytest.fixture(scope="module")
def split_world(evolve_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    path = write_config(root / "cfg.yml", evolve_world, [echo_task(evolve_world)],
                        search="m2n2", m2n2={"split": "parameter"},
                        merge={"method": "task_arithmetic", "evolve": ["weight"]},
                        grouping=GROUPING, strategy={"generations": 2, "seed": 0})
    data = yaml.safe_load(path.read_text())
    del data["strategy"]["population_size"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(path)
    search, tasks, tokenizer, settings = prepare_m2n2(cfg, log=lambda *_: None)
    search.load()
    d = search.layout.num_dims
    rng = np.random.default_rng(3)
    left, right = rng.uniform(0.2, 1.0, d), rng.uniform(0.2, 1.0, d)
    spans = tensor_spans(search.spec)
    n = spans[search.spec.layer_tensors[-1]][1]
    # boundary inside layer 1's up projection, 37 elements in
    target = 1 * n + spans["up_proj"][0] + 37
    x = np.float32(target / (search.spec.num_layers * n))
    layer, offset = (int(v[0]) for v in decode_boundary(np.asarray([x]), 3, n))
    world = {"cfg": cfg, "search": search, "left": left, "right": right, "x": x, "n": n,
             "layer": layer, "offset": offset, "settings": settings, "root": root}
    world["splice"] = _splice(world, layer, offset)  # built once for the two tests reading it
    return world


def _genome(w, x):
    return np.concatenate([w["left"], w["right"], [x]]).astype(np.float32)


def _splice(w, x_layer, x_offset):
    """The split merge built by hand: every tensor merged by the plain PS recipes (the export
    path, itself checked against mergekit), element i of layer l's flattened tensors from the left
    when l·n + i is below the boundary."""
    ps, key = w["search"].ps, np.zeros(2, np.uint32)
    left = dict(merged_tensors(ps, w["left"], key))
    right = dict(merged_tensors(ps, w["right"], key))
    spec, spans, out = ps.spec, tensor_spans(ps.spec), {}
    for hf, (short, layer) in hf_tensor_names(spec).items():
        if layer is None:
            on_left = x_layer + x_offset > 0 if short == "embed" else x_layer >= spec.num_layers
            out[hf] = left[hf] if on_left else right[hf]
            continue
        at = w["n"] if layer < x_layer else (0 if layer > x_layer else x_offset)
        index = np.arange(spans[short][1] - spans[short][0]).reshape(left[hf].shape)
        out[hf] = np.where(index < at - spans[short][0], left[hf], right[hf])
    return out


def _pass_logits(search, genomes, tokens):
    model = search.model
    keys = np.zeros((len(genomes), 2), np.uint32)
    mask = np.ones_like(tokens)

    @jax.jit
    def run(weights, genomes):
        cand = model.candidates(genomes, keys)
        h = model.hidden(weights, cand, tokens, mask)
        return model.head_map(weights, cand, h, lambda logits: logits)

    return np.asarray(run(search.weights, np.asarray(genomes, np.float32)))


def _hf_logits(world_base, tensors, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(world_base).eval()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()},
                          strict=True)
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()


def test_split_recipe_scores_the_spliced_model(split_world, evolve_world):
    w, search = split_world, split_world["search"]
    assert (w["layer"], w["offset"]) == (1, tensor_spans(search.spec)["up_proj"][0] + 37)
    tokens = np.random.default_rng(0).integers(3, 60, (2, 7)).astype(np.int32)
    ends = [np.concatenate([w["left"], w["left"], [0.0]]), np.concatenate([w["right"],
                                                                           w["right"], [0.0]])]
    got = _pass_logits(search, [_genome(w, w["x"]), _genome(w, 0.0), _genome(w, 1.0), *ends],
                       tokens)
    want = _hf_logits(evolve_world["base"], w["splice"], tokens)
    np.testing.assert_allclose(got[0], want, atol=2e-5, rtol=1e-4)
    # x = 0 is the right recipe alone, x = 1 the left one alone
    np.testing.assert_allclose(got[1], got[4], atol=1e-6)
    np.testing.assert_allclose(got[2], got[3], atol=1e-6)
    assert np.abs(got[0] - got[1]).max() > 1e-3 and np.abs(got[0] - got[2]).max() > 1e-3


def test_split_export_is_the_splice(split_world, tmp_path):
    w, search = split_world, split_world["search"]
    out = search.export(_genome(w, w["x"]), np.zeros(2, np.uint32), tmp_path / "child")
    want = w["splice"]
    reader = TensorReader(out)
    for name in want:
        np.testing.assert_array_equal(reader.read(name, np.float32), want[name], err_msg=name)
    recipe = (out / "recipe.yaml").read_text()
    assert "layer 1, up_proj parameter 37" in recipe and "layer 1 mlp" in recipe
    described = search.describe(_genome(w, w["x"]))["split"]["boundary"]
    assert described["tensor"] == "up_proj" and described["offset_in_tensor"] == 37
    assert described["cut_groups"] == ["layer 1 mlp", "embed/norm/head"]  # embed left, head right


def test_group_shares_by_hand(split_world):
    w, search = split_world, split_world["search"]
    layout, spec = search.layout, search.spec
    f = group_fractions(layout, spec, float(w["x"]))
    spans = tensor_spans(spec)
    mlp = [s for s in spec.layer_tensors if layout.kind_of(s) == 1]
    mlp_size = sum(spans[s][1] - spans[s][0] for s in mlp)
    before = sum(spans[s][1] - spans[s][0] for s in mlp
                 if spans[s][1] <= spans["up_proj"][0]) + 37
    globals_ = {g: int(np.prod(spec.global_shape(g))) for g in spec.global_tensors}
    want = [1, 1, 1, before / mlp_size, 0, 0, globals_["embed"] / sum(globals_.values())]
    np.testing.assert_allclose(f, want, rtol=1e-12)
    d = layout.num_dims
    projected = search.project(_genome(w, w["x"]))
    share = np.repeat(want, 2)  # weight [G, K]
    np.testing.assert_allclose(projected, share * w["left"].astype(np.float32)
                               + (1 - share) * w["right"].astype(np.float32), rtol=1e-6)
    assert projected.shape == (d,)


def test_breeding_split_children(split_world):
    """Children are [w·A + (1−w)·B | (1−w)·A + w·B | boundary] of the projected parents, plus
    mutation, in [0, 1]."""
    w, search = split_world, split_world["search"]
    d = search.layout.num_dims
    genomes = np.stack([_genome(w, w["x"]), _genome(w, 0.3), _genome(w, 0.9)])
    archive = {"genomes": genomes, "items": np.eye(3)}
    settings = w["settings"]
    plain = dataclasses.replace(settings, mutation_rate=0.0, children=6)
    children = breed(search, archive, None, plain, 1)
    assert children.shape == (6, 2 * d + 1)
    parents = [search.project(g) for g in genomes]
    for child in children:  # each child's halves mirror each other around some pair and w
        total = child[:d] + child[d:2 * d]
        assert any(np.allclose(total, a + b, atol=1e-5)
                   for i, a in enumerate(parents) for j, b in enumerate(parents) if i != j)
    mutated = breed(search, archive, None, dataclasses.replace(plain, mutation_rate=1.0,
                                                               mutation_scale=0.1), 1)
    assert np.all((mutated >= 0) & (mutated <= 1))
    np.testing.assert_array_equal(mutated[:, -1], children[:, -1])  # boundary not mutated
    assert np.abs(mutated[:, :-1] - children[:, :-1]).max() > 0.01


def test_mutation_rate_and_scale():
    rng = np.random.default_rng(7)
    genome = np.full(200_000, 0.5)
    out = m2n2.mutate(rng, genome, 0.25, 0.03)
    moved = out != genome
    assert abs(moved.mean() - 0.25) < 0.005
    assert abs((out[moved] - 0.5).std() - 0.03) < 0.001 and abs((out[moved] - 0.5).mean()) < 0.001
    np.testing.assert_array_equal(m2n2.mutate(rng, genome, 0.0, 0.03), genome)
    # the same stream whatever the rate: rate 1 moves every gene by the draw rate 0.25 used
    a = m2n2.mutate(np.random.default_rng(1), genome[:50], 1.0, 0.03)
    b = m2n2.mutate(np.random.default_rng(1), genome[:50], 0.25, 0.03)
    np.testing.assert_array_equal(a[b != 0.5], b[b != 0.5])

