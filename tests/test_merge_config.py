"""The merge config: every example under configs/merge/ loads; parameter values (scalars,
gradients, filters) and their precedence resolve as mergekit 0.1.5 resolves them; every bad config
fails before a tensor is read, as one `error:` line with exit code 2, writing nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import evomerge_jax as em
from evomerge_jax.cli import main
from evomerge_jax.errors import ConfigError
from evomerge_jax.merge.config import Filtered, Gradient, evaluate, parse_config
from evomerge_jax.merge.plan import load_plan, plan_from_text
from merge_models import make_family, tensors

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "merge"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """4-layer llama base + variants, and models that differ in one way each."""
    root = tmp_path_factory.mktemp("models")
    dirs = make_family(root, "llama", variants=2)
    dirs["qwen2"] = make_family(root, "qwen2_bias_sliding", variants=0)["base"]
    for name, overrides in {"wide": dict(hidden_size=64), "vocab100": dict(vocab_size=100),
                            "deep": dict(num_hidden_layers=6)}.items():
        dirs[name] = make_family(root / name, "llama", variants=0, **overrides)["base"]
    return dirs


# ---- the example configs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def example_models(tmp_path_factory):
    """A dir holding models/<name> links to 32-layer tiny models, for the example configs."""
    root = tmp_path_factory.mktemp("examples")
    family = make_family(root / "tiny", "llama", variants=2, num_hidden_layers=32)
    return root, list(family.values())


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yml")), ids=lambda p: p.name)
def test_example_config_loads(path, example_models, monkeypatch):
    root, dirs = example_models
    cfg = parse_config(path.read_text(), str(path))
    names = {cfg.base_model, *(m.model for m in cfg.models or ()),
             *(s.model for sl in cfg.slices or () for s in sl.sources)} - {None}
    (root / "models").mkdir(exist_ok=True)
    for i, name in enumerate(sorted(names)):
        assert name.startswith("models/"), f"{path.name}: use a models/... relative path"
        link = root / name
        if not link.exists():
            link.symlink_to(dirs[i % len(dirs)])
    monkeypatch.chdir(root)  # model paths are relative to the current directory
    plan = load_plan(path)
    assert plan.method.name == cfg.merge_method
    layers = sum(b - a for sl in cfg.slices for a, b in [sl.sources[0].layer_range]) \
        if cfg.slices else 32
    assert plan.spec.num_layers == layers
    assert len(plan.ops) == 3 + 9 * layers  # embed, final norm, lm_head + 9 per llama layer


# ---- parameter values and precedence ----------------------------------------------------------

def _interp(anchors, t):
    """The oracle of mergekit's gradient (a list-valued parameter): piecewise-linear over anchors
    spaced evenly on [0, 1], i.e. `np.interp` at those anchor positions."""
    return float(np.interp(t, np.linspace(0.0, 1.0, len(anchors)), anchors))


@pytest.mark.parametrize("anchors", [(0.0, 0.5, 0.3, 0.7, 1.0), (0.2, 0.9), (1.0, -0.5, 0.25)])
def test_gradient_is_piecewise_linear_over_even_anchors(anchors):
    g = Gradient(anchors)
    ts = [0.0, 0.1, 0.25, 0.375, 0.5, 0.6, 0.9, 1.0]
    assert [g.at(t) for t in ts] == pytest.approx([_interp(anchors, t) for t in ts])
    assert Gradient((0.3,)).at(0.9) == 0.3


def test_filters_first_match_wins_and_may_not_match():
    value = Filtered((("self_attn", 0.1), ("mlp", Gradient((0.0, 1.0))), (None, 0.7)))
    assert evaluate(value, 0.5, "model.layers.3.self_attn.q_proj.weight") == 0.1
    assert evaluate(value, 0.5, "model.layers.3.mlp.up_proj.weight") == 0.5
    assert evaluate(value, 0.5, "model.norm.weight") == 0.7
    assert evaluate(Filtered((("mlp", 1.0),)), 0.0, "model.norm.weight") is None


def _op(plan, name):
    return next(op for op in plan.ops if op.name == name)


def test_precedence_gradients_and_filter_targets(models):
    """source > slice > top level > default; t per output slice (t = 1 for a one-layer slice,
    0 for embed/norm/lm_head); per-source filters see the source tensor, global ones the output."""
    plan = plan_from_text(f"""
merge_method: ties
base_model: {models['base']}
parameters:
  weight: 0.1
  lambda:
    - filter: layers.1.
      value: 0.3
slices:
  - sources:
      - model: {models['base']}
        layer_range: [0, 3]
      - model: {models['a']}
        layer_range: [1, 4]
        parameters:
          density:
            - filter: layers.1.
              value: 0.9
          weight: [0.0, 1.0]
      - model: {models['b']}
        layer_range: [0, 3]
    parameters: {{weight: 0.2}}
  - sources:
      - model: {models['base']}
        layer_range: [3, 4]
      - model: {models['a']}
        layer_range: [3, 4]
        parameters: {{weight: [0.4, 0.6]}}
      - model: {models['b']}
        layer_range: [3, 4]
""")
    q = "self_attn.q_proj.weight"
    # a's gradients, at t = j / (n - 1) of an n-layer slice, and t = 1 for the one-layer slice
    expected = [(_interp((0.0, 1.0), j / 2), 0.2) for j in range(3)]
    expected.append((_interp((0.4, 0.6), 1.0), 0.1))
    got = [_op(plan, f"model.layers.{i}.{q}").params["weight"] for i in range(4)]
    assert [w for w, _ in got] == pytest.approx([w for w, _ in expected])
    assert [w for _, w in got] == [w for _, w in expected]
    # layer 0 reads a's layer 1: the per-source filter sees the source name.
    assert _op(plan, f"model.layers.0.{q}").params["density"] == (0.9, 1.0)
    assert "density" not in _op(plan, f"model.layers.1.{q}").params  # the default, from the registry
    # the global filter sees the output name
    assert _op(plan, f"model.layers.1.{q}").params["lambda"] == 0.3
    assert "lambda" not in _op(plan, f"model.layers.0.{q}").params
    embed, head = _op(plan, "model.embed_tokens.weight"), _op(plan, "lm_head.weight")
    # embed from the first slice, lm_head from the last, both at t = 0
    assert embed.params["weight"] == pytest.approx((_interp((0.0, 1.0), 0.0), 0.2))
    assert head.params["weight"] == pytest.approx((_interp((0.4, 0.6), 0.0), 0.1))
    assert _op(plan, f"model.layers.0.{q}").sources[0].tensor == f"model.layers.1.{q}"
    assert _op(plan, f"model.layers.0.{q}").base.model == Path(models["base"]).resolve()


def test_relative_paths_resolve_against_the_working_dir(models, tmp_path, monkeypatch):
    (tmp_path / "work" / "models").mkdir(parents=True)
    (tmp_path / "work" / "models" / "m").symlink_to(models["a"])
    cfg = tmp_path / "elsewhere" / "c.yml"
    cfg.parent.mkdir()
    cfg.write_text("merge_method: passthrough\nmodels: [{model: models/m}]\n")
    monkeypatch.chdir(tmp_path / "work")
    assert load_plan(cfg).models == ((tmp_path / "work" / "models" / "m").absolute(),)
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"models\[0\] \(models/m\): .*no such model directory"):
        load_plan(cfg)


# ---- writing: tokenizer, dtype, shards, the config it ran -------------------------------------

def test_output_dir_contents(models, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (tok / f).symlink_to(Path(models["b"]) / f)
    (tok / "tokenizer.json").write_text('{"fake": true}')
    text = f"""
merge_method: passthrough
models: [{{model: {models['a']}, parameters: {{scale: 2.0}}}}]
dtype: bfloat16
tokenizer_source: {tok}
"""
    (tmp_path / "c.yml").write_text(text)
    out = tmp_path / "out"
    assert main(["merge", str(tmp_path / "c.yml"), str(out), "--shard-size", "30KB", "--quiet"]) == 0
    assert (out / "tokenizer.json").read_text() == '{"fake": true}'
    assert (out / "mergekit_config.yml").read_text() == text
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert (out / "model.safetensors.index.json").exists()
    ckpt = em.load(out)
    assert str(ckpt.dtype) == "bfloat16" and ckpt.config["torch_dtype"] == "bfloat16"
    source = tensors(models["a"])["model.layers.2.mlp.up_proj.weight"]
    expected = 2 * torch.tensor(source).float().bfloat16().double().numpy()  # rounded, then merged
    np.testing.assert_array_equal(tensors(out)["model.layers.2.mlp.up_proj.weight"], expected)


# ---- bad configs ------------------------------------------------------------------------------

TIES = "merge_method: ties\nbase_model: {base}\n"
TWO = ("models:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
       "  - model: {b}\n    parameters: {{weight: 0.5}}\n")

BAD = {
    "unknown_method": ("merge_method: tiez\nmodels: [{{model: {a}}}]\n",
                       r"merge_method: unknown merge method 'tiez'; choose one of linear, .*ties"),
    "typo_top_key": ("merge_methd: ties\nmodels: [{{model: {a}}}]\n",
                     r"unknown key 'merge_methd' at the top level; known: merge_method, "),
    "typo_entry_key": (TIES + "models:\n  - model: {a}\n    parameter: {{weight: 1}}\n",
                       r"unknown key 'parameter' in models\[0\]; known: model, parameters"),
    "typo_slice_key": ("merge_method: passthrough\nslices:\n  - sources:\n      - model: {a}\n"
                       "        layer_rnage: [0, 2]\n",
                       r"unknown key 'layer_rnage' in slices\[0\]\.sources\[0\]; known: model, "
                       r"layer_range, parameters"),
    "unsupported_key": ("merge_method: passthrough\nmodels: [{{model: {a}}}]\nchat_template: x\n",
                        r"'chat_template' is not supported yet"),
    "missing_weight": (TIES + "models:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
                       "  - model: {b}\n",
                       r"missing required parameter 'weight' for \S+llama_b \(models\[1\]\)"),
    "missing_t": ("merge_method: slerp\nbase_model: {base}\nmodels: [{{model: {a}}}]\n",
                  r"missing required parameter 't' of merge method 'slerp'"),
    "density_above_1": (TIES + TWO.replace("{{weight: 0.5}}", "{{weight: 0.5, density: 1.5}}", 1),
                        r"models\[0\]\.parameters\.density = 1\.5 for \S+llama_a at "
                        r"model\.embed_tokens\.weight is outside \[0, 1\]"),
    "density_gradient_below_0": (TIES + TWO + "parameters: {{density: [0.5, -0.2]}}\n",
                                 r"parameters\.density = -0\.2\d* for \S+ at model\.layers\.3\.\S+ is "
                                 r"outside \[0, 1\]"),
    "layer_range_out_of_bounds": (
        "merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [2, 9]}}]\n",
        r"slices\[0\]\.sources\[0\]\.layer_range \[2, 9\] is out of bounds for \S+llama_a "
        r"\(4 layers"),
    "layer_range_reversed": (
        "merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [3, 1]}}]\n",
        r"layer_range \[3, 1\] is out of bounds"),
    "unequal_slice_sources": (
        "merge_method: linear\nparameters: {{weight: 1}}\nslices:\n  - sources:\n"
        "      - {{model: {a}, layer_range: [0, 3]}}\n      - {{model: {b}, layer_range: [0, 2]}}\n",
        r"slices\[0\] sources cover different numbers of layers: slices\[0\]\.sources\[0\] "
        r"\(\S+\) 3, slices\[0\]\.sources\[1\] \(\S+\) 2"),
    "different_architecture": (TIES + TWO.replace("{b}", "{qwen2}"),
                               r"models\[1\] \(\S+qwen2\S*\) differs from \S+: architecture "
                               r"'Qwen2ForCausalLM' vs 'LlamaForCausalLM'"),
    "different_shape": (TIES + TWO.replace("{b}", "{wide}"),
                        r"models\[1\] \(\S+wide\S*\) differs from \S+: hidden_size 64 vs 32"),
    "vocab_mismatch": (TIES + TWO.replace("{b}", "{vocab100}"),
                       r"vocabulary mismatch: \S+llama_base has vocab_size 97 but models\[1\] "
                       r"\(\S+vocab100\S*\) has 100"),
    "different_depth": (TIES + TWO.replace("{b}", "{deep}"),
                        r"models\[1\] \(\S+\) has 6 layers but \S+ has 4; use slices"),
    "tokenizer_union": (TIES + TWO + "tokenizer_source: union\n",
                        r"tokenizer_source: union is not supported yet"),
    "tokenizer_base_without_base": ("merge_method: linear\n" + TWO + "tokenizer_source: base\n",
                                    r"tokenizer_source: base needs base_model"),
    "models_and_slices": (TIES + TWO + "slices: []\n", r"give exactly one of 'models' or 'slices'"),
    "neither_models_nor_slices": (TIES, r"give exactly one of 'models' or 'slices'"),
    "base_missing_from_slice": (
        TIES + "parameters: {{weight: 1}}\nslices:\n"
        "  - sources: [{{model: {a}, layer_range: [0, 4]}}]\n",
        r"slices\[0\] has no source from base_model \S+; merge method 'ties' needs it"),
    "no_base_model": ("merge_method: ties\n" + TWO, r"merge method 'ties' needs base_model"),
    "arity": ("merge_method: slerp\nbase_model: {base}\nparameters: {{t: 0.5}}\n"
              "models: [{{model: {a}}}, {{model: {b}}}]\n",
              r"merge method 'slerp' takes exactly 1 non-base model\(s\), got 2 in models"),
    "missing_model_dir": (TIES + TWO.replace("{b}", "{b}_nope"),
                          r"models\[1\] \(\S+_nope\): \S+ no such model directory"),
    "bad_yaml": ("merge_method: [ties\n", r"not valid YAML"),
    "not_a_mapping": ("- ties\n", r"expected a mapping"),
    # pydantic lists the allowed values in an order that varies between runs
    "bad_dtype": (TIES + TWO + "dtype: float8\n",
                  r"dtype: Input should be (?=.*'float32')(?=.*'float16')(?=.*'bfloat16')"),
    "bad_value_type": (TIES + TWO.replace("{{weight: 0.5}}", "{{weight: abc}}", 1),
                       r"models\[0\]\.parameters\.weight = 'abc' for \S+: expected a number"),
    "bad_filter_entry": (TIES + TWO.replace("{{weight: 0.5}}",
                                            "{{weight: [{{filter: mlp, val: 1}}]}}", 1),
                         r"models\[0\]\.parameters\.weight: filter entry 0 has unknown key 'val'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config(case, models, tmp_path, capsys):
    template, expected = BAD[case]
    cfg = tmp_path / "c.yml"
    cfg.write_text(template.format(**models))
    with pytest.raises(ConfigError, match=expected):
        load_plan(cfg)
    out = tmp_path / "out"
    assert main(["merge", str(cfg), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(expected, err), err
    assert sorted(os.listdir(tmp_path)) == ["c.yml"]  # no output, no temp dir
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["merge", str(cfg), str(out), "--overwrite"]) == 2
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["c.yml", "out"]


SLERP = "merge_method: slerp\nbase_model: {base}\nparameters: {{t: 0.3}}\nmodels:\n"
# name -> (config, the same config without the ignored parameter, the warning)
IGNORED = {
    "typo_parameter": (TIES + TWO.replace("{{weight: 0.5}}", "{{weight: 0.5, dencity: 0.3}}", 1),
                       TIES + TWO,
                       r"parameter 'dencity' in models\[0\]\.parameters is ignored: merge method "
                       r"'ties' does not read it \(it reads density, "),
    "global_in_source": (TIES + TWO.replace("{{weight: 0.5}}", "{{weight: 0.5, normalize: false}}", 1),
                         TIES + TWO,
                         r"parameter 'normalize' in models\[0\]\.parameters is ignored: it is "
                         r"global for merge method 'ties'"),
    "weight_for_slerp": (SLERP + "  - model: {base}\n    parameters: {{weight: 0.6}}\n"
                         "  - model: {a}\n    parameters: {{weight: 0.4}}\n",
                         SLERP + "  - model: {base}\n  - model: {a}\n",
                         r"parameter 'weight' in models\[0\]\.parameters is ignored: merge method "
                         r"'slerp' does not read it \(it reads t\)"),
}


@pytest.mark.parametrize("case", list(IGNORED))
def test_parameter_the_method_does_not_read_warns(case, models, tmp_path, capsys):
    """As mergekit ignores it: one `warning:` line per occurrence naming it and the method, and
    the merge is the one without it."""
    template, without, expected = IGNORED[case]
    cfg, plain = tmp_path / "c.yml", tmp_path / "plain.yml"
    cfg.write_text(template.format(**models))
    plain.write_text(without.format(**models))
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == (2 if case == "weight_for_slerp" else 1), err
    assert all(line.startswith("warning: ") for line in err) and re.search(expected, err[0]), err
    assert main(["merge", str(plain), str(tmp_path / "plain"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    ours, reference = tensors(tmp_path / "out"), tensors(tmp_path / "plain")
    assert sorted(ours) == sorted(reference)
    assert all(np.array_equal(ours[n], reference[n]) for n in reference)


def test_existing_output_needs_overwrite(models, tmp_path, capsys):
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"merge_method: passthrough\nmodels: [{{model: {models['a']}}}]\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--quiet"]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--quiet", "--overwrite"]) == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").exists()
