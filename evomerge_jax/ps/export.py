"""Export an evolved candidate as a Hugging Face dir, layer by layer with the population pass's own
merge (same functions, same keys), plus its recipe in mergekit's YAML format beside it.

The recipe is a `slices:` config with one slice per layer group. Values that differ between the
attention and MLP tensors, or that belong to the global tensors (`globals: own`), are written as
mergekit filter lists: the first entry whose filter is a substring of the tensor name wins.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from ..arch import global_hf_name, layer_hf_name
from ..checkpoint import DTYPES, output_config, write_hf_dir
from ..evolve.method_genes import takes_base
from ..merge.methods import get_method
from ..parallel.xla_options import merge_jit
from ..sources import source_reader
from .genome import clip

# mergekit tensor-name substrings of each side of a layer (the norm before each block included).
_SIDE_FILTERS = (("self_attn", "input_layernorm"), ("mlp", "post_attention_layernorm"))
_GLOBAL_FILTERS = {"embed": "embed_tokens", "final_norm": "model.norm.", "lm_head": "lm_head"}


@partial(merge_jit, static_argnames=("model",))
def _merge_layer(model, layer_w, coefs_l, key_data, layer):
    return model.merge_layer(layer_w, coefs_l, key_data, layer)


@partial(merge_jit, static_argnames=("model",))
def _merge_globals(model, base, sources, one):
    weights = {"base": base, "sources": sources, "tables": {}}
    return {name: model.merge_global(weights, model.global_values(one, name), one["key"], name)
            for name in base}


def merged_tensors(search, genome, key_data):
    """Yield (HF name, merged numpy array) in HF order, holding the global tensors and one layer
    at a time. The merge is
    the population pass's own (`PSModel.merge_layer` for a population of one, `merge_global`),
    with the candidate's keys, so the tensors are those the candidate was scored with."""
    model, spec = search.model, search.spec
    cand = model.candidates(jnp.asarray(search.clip(np.asarray(genome)[None])[0]),
                            jnp.asarray(key_data, jnp.uint32)[None])
    coefs = model.layer_coefs(cand)  # {param: [L, 1, ...]}
    one = jax.tree.map(lambda x: x[0], cand)
    readers = [source_reader(search.cfg.base_model)] + [source_reader(m)
                                                        for m in search.cfg.models]
    dtype = DTYPES[model.dtype]

    def read(name):
        return (jnp.asarray(readers[0].read(name, dtype)),
                jnp.stack([jnp.asarray(r.read(name, dtype)) for r in readers[1:]]))

    names = spec.global_tensors
    pairs = {short: read(global_hf_name(short)) for short in names}
    globals_ = _merge_globals(model, {s: b for s, (b, _) in pairs.items()},
                            {s: k for s, (_, k) in pairs.items()}, one)
    del pairs
    yield global_hf_name("embed"), np.asarray(globals_["embed"])
    for layer in range(spec.num_layers):
        pairs = {short: read(layer_hf_name(short, layer, spec)) for short in spec.layer_tensors}
        layer_w = ({s: b for s, (b, _) in pairs.items()}, {s: k for s, (_, k) in pairs.items()}, {})
        coefs_l = jax.tree.map(lambda x, at=layer: x[at], coefs)
        merged = _merge_layer(model, layer_w, coefs_l, cand["key"], layer)
        for short in spec.layer_tensors:
            yield layer_hf_name(short, layer, spec), np.asarray(merged[short][0])
    for short in names[1:]:
        yield global_hf_name(short), np.asarray(globals_[short])


def export_ps(search, genome, key_data, out_dir, *, overwrite=False, note: str = "") -> Path:
    """Write the candidate as an HF dir (config, tokenizer, shards) with recipe.yaml."""
    cfg = search.cfg
    tokenizer_dir = cfg.tokenizer or cfg.vision_model or cfg.base_model
    out_cfg = output_config(search.hf_config, search.spec, DTYPES[search.model.dtype])
    return write_hf_dir(out_dir, merged_tensors(search, genome, key_data), out_cfg,
                        tokenizer_from=tokenizer_dir, overwrite=overwrite,
                        extra_files={"recipe.yaml": recipe_yaml(search, genome, note)})


def _entries(layout, values, name, groups_by_filter, fallback_group, k=None):
    """A mergekit value: a scalar when every filter has the fallback's value, else a filter list."""
    pick = lambda g: round(float(values[name][g] if k is None else values[name][g][k]), 6)  # noqa
    entries = [{"filter": f, "value": pick(g)} for f, g in groups_by_filter
               if pick(g) != pick(fallback_group)]
    if not entries:
        return pick(fallback_group)
    return entries + [{"value": pick(fallback_group)}]


def recipe(search, genome) -> dict:
    """The candidate as a mergekit config (a dict; `recipe_yaml` adds the comments)."""
    cfg, layout, spec = search.cfg, search.layout, search.spec
    values = layout.to_values(clip(np.asarray(genome)[None])[0][0])
    slices = []
    for lg in range(layout.num_layer_groups):
        first = lg * layout.layers_per_group
        last = min(first + layout.layers_per_group, spec.num_layers)
        filters = []
        for name in ("embed", "final_norm", "lm_head"):
            at_edge = (lg == 0) if name == "embed" else (lg == layout.num_layer_groups - 1)
            if at_edge and not (name == "lm_head" and spec.tie_word_embeddings):
                filters.append((_GLOBAL_FILTERS[name], layout.global_group(name)))
        for kind, subs in enumerate(_SIDE_FILTERS[:layout.num_kinds]):
            filters += [(s, layout.layer_group(first, kind)) for s in subs]
        fallback = layout.layer_group(first, 0)
        with_base = takes_base(cfg.merge.method)  # linear, karcher: no base model in mergekit
        sources = [{"model": str(cfg.base_model), "layer_range": [first, last]}] * with_base
        for k, path in enumerate(cfg.models):
            params = {n: _entries(layout, values, n, filters, fallback, k)
                      for n, per_source in zip(layout.params, layout.per_source) if per_source}
            sources.append({"model": str(path), "layer_range": [first, last], "parameters": params})
        item = {"sources": sources}
        shared = {n: _entries(layout, values, n, filters, fallback)
                  for n, per_source in zip(layout.params, layout.per_source) if not per_source}
        if shared:
            item["parameters"] = shared
        slices.append(item)
    out = {"merge_method": cfg.merge.method,
           **({"base_model": str(cfg.base_model)} if takes_base(cfg.merge.method) else {}),
           "slices": slices, "dtype": search.model.dtype}
    fixed = {k: v for k, v in cfg.merge.parameters.items()}
    if fixed:
        out["parameters"] = fixed
    if cfg.tokenizer:
        out["tokenizer_source"] = str(cfg.tokenizer)
    return out


def recipe_yaml(search, genome, note: str = "") -> str:
    cfg = search.cfg
    lines = ["# Evolved merge recipe (evomerge PS search), in mergekit's config format."]
    if note:
        lines.append(f"# {note}")
    if get_method(cfg.merge.method).random:
        lines.append(f"# {cfg.merge.method} drops elements at random: evomerge draws its masks from "
                     "keys of (seed, generation, candidate, tensor), mergekit from its own RNG, so "
                     "mergekit builds another sample of this recipe, not these exact tensors.")
    if cfg.merge.rescale_rule != "l1":
        lines.append(f"# rescale_rule {cfg.merge.rescale_rule} has no mergekit equivalent "
                     "(mergekit rescales by the L1 norm).")
    return "\n".join(lines) + "\n" + yaml.safe_dump(recipe(search, genome), sort_keys=False)
