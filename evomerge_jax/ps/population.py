"""The PS population pass: P candidate merges scored in one compiled function, merging inside the
layer scan (docs/design.md §2.1) so that no merged model is ever built.

`PSModel` is a *population model*: the interface the tasks score through, which a DFS model
implements the same way (routing layers instead of merging them):

    candidates(genomes [P, D], keys [P, 2]) -> cand      per-candidate device inputs, decoded on device
    hidden(weights, cand, tokens [B, S], mask [B, S]) -> h [P, B, S, D]
    head_map(weights, cand, h, fn) -> fn(logits [B, S, V]) for each candidate, stacked on P
    generate(weights, cand, tokens, mask, ...) -> new tokens [P, B, new]   (greedy, KV cache)
    memory(rows, seq, new_tokens, model_axis) -> (bytes per candidate, per global-tensor
        candidate), as `memory_model.Bytes`; fixed_memory(model_axis) -> bytes per device that
        do not grow with the candidates (memory_model.py holds every formula)

Memory. The scan step receives layer l of the base and of the K sources and, `merge_batch`
candidates at a time (a `lax.map`), merges the layer and applies it to those candidates' hidden
states: a candidate keeps nothing of the layer, so its cost in the scan is its hidden state, and
the merge temporaries are those of `merge_batch` candidates whatever P is. The global tensors
(embed, lm_head: the largest in most models) are merged `global_batch` candidates at a time inside a `lax.map`, for the embedding
lookup and for the head, so they never cost P copies either. Free generation (the `generate`
task) merges the globals once per candidate (P × embed/head) and re-merges each layer at every
decoding step (`generation="remerge"`), or merges every layer once per device call and reuses
the merged layers over the prefill and all decode steps (`generation="cached"`: P × one model in
the forward dtype). The evaluator picks the mode from the memory model (`compute.generation`).

Randomness (DARE, DELLA). Candidate c of generation g draws its masks from
`candidate_key(seed, g, c)`, folded with a stable id of the tensor and its layer index
(`tensor_key`), with the generator of `compute.prng` (a fast counter hash by default, see
prng.py); export recomputes the same keys, so the exported model is the one that was scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from ..arch import ModelSpec
from ..generation import greedy_loop
from ..kernels import KERNEL_METHODS, population_merge
from ..merge.methods import get_method, merge_tensor
from ..model import decoder_layer, make_context, positions_from_mask, sliding_flags, unembed
from ..model import embed as embed_tokens
from ..parallel.memory_model import Workload, ps_candidate_bytes, shared_merge_bytes
from ..parallel.seeds import tensor_key
from ..vision_splice import with_image
from .genome import GenomeLayout


@dataclass(frozen=True)
class PSModel:
    """Static description of the PS population pass (hashable: a jit static argument)."""

    spec: ModelSpec
    layout: GenomeLayout
    method: str
    rescale_rule: str
    fixed: tuple[tuple[str, float | bool], ...]  # merge parameters that are not evolved
    dtype: str                                   # forward dtype
    uses_tables: bool                            # magnitude sparsifiers: sorted tables in weights
    prng: str = "hash"                           # generator of the random masks (prng.py)
    global_batch: int = 1                        # candidates per step of the global-tensor map
    kernels: str = "jnp"                         # merge backend: "pallas" (kernels/) or "jnp"
    interpret: bool = False                      # run the Pallas kernels interpreted (CPU)
    generation: str = "remerge"                  # generate: "cached" layers or "remerge" per step
    merge_batch: int = 1                         # candidates merged (and applied) at a time

    # ---- merging -------------------------------------------------------------------------
    def merge_one(self, base, sources_k, params: dict, key, table_kn=None):
        """One tensor of one candidate: `merge_tensor` with the run's method and options, cast to
        the forward dtype (export goes through the same `merge_layer`/`merge_global`)."""
        method = get_method(self.method)
        options = {"rescale_rule": self.rescale_rule} if "rescale_rule" in method.options else {}
        if table_kn is not None:
            options["magnitude_tables_kn"] = table_kn
        if method.base == "none":  # linear, karcher: mergekit ignores the base model
            base = None
        merged = merge_tensor(self.method, base, sources_k, {**dict(self.fixed), **params}, key,
                              **options)
        return merged.astype(self.dtype)

    @property
    def fused(self) -> bool:
        """Whether tensors merge through the fused population kernel (kernels/)."""
        return self.kernels == "pallas" and self.method in KERNEL_METHODS

    def merge_population(self, base, sources_k, params: dict, keys_p2, name: str, layer=None,
                         table_kn=None):
        """One tensor for the P candidates by the fused kernel: [P, ...] in the forward dtype."""
        return population_merge(
            self.method, base, sources_k, {**dict(self.fixed), **params}, keys_p2,
            backend="pallas", prng=self.prng, rescale_rule=self.rescale_rule, out_dtype=self.dtype,
            table_kn=table_kn, wrap_key=lambda data: tensor_key(data, name, layer, self.prng),
            interpret=self.interpret)

    def candidates(self, genomes_pd, keys_p2):
        return {"values": self.layout.to_values(genomes_pd, jnp), "key": keys_p2}

    def _group_params(self, values: dict, group) -> dict:
        return {name: v[group] for name, v in values.items()}

    def merge_global(self, weights, values: dict, key_data, name: str):
        table = weights["tables"].get(name) if self.uses_tables else None
        params = self._group_params(values, self.layout.global_group(name))
        if self.fused:  # one candidate (the global-tensor map batches these by vmap)
            one = {n: jnp.asarray(v)[None] for n, v in params.items()}
            return self.merge_population(weights["base"][name], weights["sources"][name], one,
                                         jnp.asarray(key_data)[None], name, None, table)[0]
        return self.merge_one(weights["base"][name], weights["sources"][name], params,
                              tensor_key(key_data, name, prng=self.prng), table)

    def global_values(self, cand, name: str) -> dict:
        """The candidates' values {param: [P, G, ...]} that merge global tensor `name` (a split
        recipe, ps/split_genome.py, takes the embedding from its left side, the rest from its
        right)."""
        del name
        return cand["values"]

    def layer_coefs(self, cand) -> dict:
        """{param: [P, G, ...]} -> {param: [L, P, kinds, ...]}: each layer's sets, gathered once
        (the `coef` that `merge_candidate_layer` receives)."""
        table = jnp.asarray(self.layout.layer_table())
        return {n: jnp.moveaxis(v[:, table], 1, 0) for n, v in cand["values"].items()}

    def merge_layer_tensor(self, layer_w, name: str, params: dict, key_data, layer):
        """Tensor `name` of layer `layer` of one candidate merged with `params` (scalars or
        [K] per source), in the forward dtype."""
        base, sources, tables = layer_w
        if self.fused:  # the population kernel, with a population of one
            one = {n: jnp.asarray(v)[None] for n, v in params.items()}
            return self.merge_population(base[name], sources[name], one,
                                         jnp.asarray(key_data)[None], name, layer,
                                         tables.get(name))[0]
        return self.merge_one(base[name], sources[name], params,
                              tensor_key(key_data, name, layer, self.prng), tables.get(name))

    def merge_candidate_layer(self, layer_w, coef, key_data, layer) -> dict:
        """Layer `layer` of one candidate: {name: tensor} in the forward dtype."""
        return {name: self.merge_layer_tensor(
                    layer_w, name, {n: v[self.layout.kind_of(name)] for n, v in coef.items()},
                    key_data, layer)
                for name in self.spec.layer_tensors}

    def merge_layer(self, layer_w, coefs_l, keys, layer) -> dict:
        """Layer `layer` for every candidate: {name: [P, ...]}, merged `merge_batch` candidates
        at a time (a `lax.map`), so that the float32 merge temporaries are those of
        `merge_batch` candidates whatever P is."""
        one = lambda args: self.merge_candidate_layer(layer_w, *args, layer)  # noqa: E731
        return jax.lax.map(one, (coefs_l, keys), batch_size=self.merge_batch)

    def _layer_inputs(self, weights, cand):
        tables = weights["tables"].get("layers", {}) if self.uses_tables else {}
        layers = (weights["base"]["layers"], weights["sources"]["layers"], tables)
        return (layers, self.layer_coefs(cand), sliding_flags(self.spec),
                jnp.arange(self.spec.num_layers))

    # ---- the population model interface -------------------------------------------------
    def hidden(self, weights, cand, tokens_bs, mask_bs, image=None):
        spec = self.spec
        positions = positions_from_mask(mask_bs)
        index = jnp.broadcast_to(jnp.arange(tokens_bs.shape[1]), tokens_bs.shape)
        ctx = make_context(spec, positions, mask_bs, index)

        def embed_one(one):
            table = self.merge_global(weights, self.global_values(one, "embed"), one["key"],
                                      "embed")
            return with_image(embed_tokens({"embed": table}, spec, tokens_bs), image)

        h = jax.lax.map(embed_one, cand, batch_size=self.global_batch)

        def step(h_pbsd, xs):
            layer_w, coefs_l, is_sliding, layer = xs

            def one(args):  # merge one candidate's layer and apply it: nothing kept per candidate
                coef, key_data, h_bsd = args
                lp = self.merge_candidate_layer(layer_w, coef, key_data, layer)
                return decoder_layer(lp, spec, h_bsd, ctx, is_sliding)[0]

            return jax.lax.map(one, (coefs_l, cand["key"], h_pbsd),
                               batch_size=self.merge_batch), None

        h, _ = jax.lax.scan(step, h, self._layer_inputs(weights, cand))
        return h

    def _head_params(self, weights, one) -> dict:
        """The final norm and the head of one candidate (`one`: its slice of `cand`)."""
        merge = lambda name: self.merge_global(  # noqa: E731
            weights, self.global_values(one, name), one["key"], name)
        head = "embed" if self.spec.tie_word_embeddings else "lm_head"
        return {"final_norm": merge("final_norm"), "embed": None, head: merge(head)}

    def head_map(self, weights, cand, h_pbsd, fn):
        def one(args):
            cand_one, h_bsd = args
            logits = unembed(self._head_params(weights, cand_one), self.spec, h_bsd)
            return fn(logits)

        return jax.lax.map(one, (cand, h_pbsd), batch_size=self.global_batch)

    def merged_layers(self, weights, cand) -> dict:
        """Every layer of every candidate merged once: {name: [L, P, ...]} in the forward dtype
        (the same `merge_layer` and keys as the layer scan, one layer's temporaries at a time)."""
        def step(_, xs):
            layer_w, coefs_l, _flag, layer = xs
            return None, self.merge_layer(layer_w, coefs_l, cand["key"], layer)

        return jax.lax.scan(step, None, self._layer_inputs(weights, cand))[1]

    def generate(self, weights, cand, tokens_bs, mask_bs, *, max_new_tokens: int,
                 eos_ids: tuple[int, ...], pad_id: int, image=None):
        spec = self.spec
        heads = jax.vmap(partial(self._head_params, weights))(cand)
        embeds = heads["embed"] if spec.tie_word_embeddings else jax.vmap(
            lambda one: self.merge_global(weights, self.global_values(one, "embed"), one["key"],
                                          "embed"))(cand)
        layer_inputs = self._layer_inputs(weights, cand)
        if self.generation == "cached":  # merged once here, outside the decode loop
            layer_inputs = (self.merged_layers(weights, cand), layer_inputs[2])

        def embed_fn(tokens):
            if tokens.ndim == 2:  # the shared prompt (and its images)
                return with_image(
                    jax.vmap(lambda e: embed_tokens({"embed": e}, spec, tokens))(embeds), image)
            return jax.vmap(lambda e, t: embed_tokens({"embed": e}, spec, t))(embeds, tokens)

        def layers_fn(h, ctx, caches, cache_index):
            def cached(h_pbsd, xs):  # one candidate at a time: plain (unbatched) matmuls
                (lp, is_sliding), k, v = xs
                apply = lambda a: decoder_layer(  # noqa: E731
                    a[0], spec, a[1], ctx, is_sliding, a[2:], cache_index)
                return jax.lax.map(apply, (lp, h_pbsd, k, v))

            def remerge(h_pbsd, xs):  # one candidate's layer merged and applied at a time
                (layer_w, coefs_l, is_sliding, layer), k, v = xs

                def one(args):
                    coef, key_data, h_bsd, kk, vv = args
                    lp = self.merge_candidate_layer(layer_w, coef, key_data, layer)
                    return decoder_layer(lp, spec, h_bsd, ctx, is_sliding, (kk, vv), cache_index)

                return jax.lax.map(one, (coefs_l, cand["key"], h_pbsd, k, v),
                                   batch_size=self.merge_batch)

            step = cached if self.generation == "cached" else remerge
            return jax.lax.scan(step, h, (layer_inputs, *caches))

        def unembed_fn(h):
            return jax.lax.map(lambda a: unembed(a[0], spec, a[1]), (heads, h))

        p, (b, s) = cand["key"].shape[0], tokens_bs.shape
        shape = (spec.num_layers, p, b, s + max_new_tokens, spec.num_kv_heads, spec.head_dim)
        caches = (jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
        return greedy_loop(embed_fn, layers_fn, unembed_fn, caches, tokens_bs, mask_bs, spec,
                           max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id)

    def memory(self, rows: int, seq: int, new_tokens: int = 0, model_axis: int = 1):
        """(bytes per candidate of the layer scan, per candidate of the global-tensor map) of one
        batch, as `memory_model.Bytes`: the planner's formulas (memory_model.py), one place."""
        return ps_candidate_bytes(self.spec, self.layout.num_sources, self.dtype,
                                  Workload(rows, seq, new_tokens), model_axis,
                                  cached=self.generation == "cached")

    def fixed_memory(self, model_axis: int = 1, work=()) -> int:
        """Bytes per device that do not grow with the candidates, over the workloads `work`."""
        return shared_merge_bytes(self.spec, self.layout.num_sources, model_axis, self.dtype,
                                  work, self.merge_batch)
