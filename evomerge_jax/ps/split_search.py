"""The `Search` over split genomes (ps/split_genome.py): PS's sources, layout, weights and export,
with genomes of 2D + 1 genes and the `SplitPSModel`. `search: m2n2` with `m2n2.split: parameter`
runs on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..checkpoint import DTYPES, output_config, write_hf_dir
from .export import merged_tensors, recipe_yaml
from .genome import clip
from .split_genome import SplitPSModel, decode_boundary, group_fractions, project, tensor_spans


class SplitSearch:
    """PS's search (`ps`, a `PSSearch`) with split genomes [left D | right D | boundary]."""

    kind = "ps"

    def __init__(self, ps):
        self.ps = ps
        self.cfg, self.spec, self.hf_config = ps.cfg, ps.spec, ps.hf_config
        self.layout, self.dtype = ps.layout, ps.dtype
        fields = {f.name: getattr(ps.model, f.name) for f in dataclasses.fields(ps.model)}
        self.model = SplitPSModel(**fields)

    @property
    def weights(self):
        return self.ps.weights

    @property
    def num_dims(self) -> int:
        return 2 * self.layout.num_dims + 1

    def weight_layout(self) -> tuple:
        return self.ps.weight_layout()

    def load(self, mesh=None):
        self.ps.load(mesh)
        return self

    def initial_mean(self) -> np.ndarray:
        mean = self.ps.initial_mean()
        return np.concatenate([mean, mean, np.zeros(1, np.float32)])

    def clip(self, genomes):
        return clip(genomes)

    def project(self, genome) -> np.ndarray:
        """The PS genome of the parameter-weighted mean of each group's two sides."""
        return project(self.layout, self.spec, clip(np.asarray(genome)[None])[0][0])

    def boundary(self, genome) -> dict:
        """Where the split genome's boundary falls: layer, tensor, parameter within it."""
        genome = clip(np.asarray(genome)[None])[0][0]
        spans = tensor_spans(self.spec)
        n = spans[self.spec.layer_tensors[-1]][1]
        layer, offset = (int(v[0]) for v in decode_boundary(genome[-1:], self.spec.num_layers, n))
        tensor = next((name for name, (first, end) in spans.items() if first <= offset < end),
                      None) if layer < self.spec.num_layers else None
        cut = [self.layout.group_label(g) for g, f in enumerate(
            group_fractions(self.layout, self.spec, float(genome[-1]))) if 0 < f < 1]
        return {"gene": round(float(genome[-1]), 6), "layer": layer, "offset": offset,
                "layer_parameters": n, "tensor": tensor,
                "offset_in_tensor": None if tensor is None else offset - spans[tensor][0],
                "cut_groups": cut}

    def describe(self, genome) -> dict:
        """PS's recipe of the projection, with both sides and the boundary under "split"."""
        genome = clip(np.asarray(genome)[None])[0][0]
        d = self.layout.num_dims
        out = self.ps.describe(self.project(genome))
        out["split"] = {"boundary": self.boundary(genome),
                        "left": self.ps.describe(genome[:d])["values"],
                        "right": self.ps.describe(genome[d:2 * d])["values"]}
        return out

    def export(self, genome, key_data, out_dir, *, overwrite=False, note: str = "") -> Path:
        """The exact split merge as an HF dir; recipe.yaml is the projection's mergekit recipe,
        exact when no layer group is cut (it says so otherwise)."""
        where = self.boundary(genome)
        if where["cut_groups"]:
            comment = (f"split recipe cut at layer {where['layer']}, {where['tensor']} parameter "
                       f"{where['offset_in_tensor']}, which mergekit cannot express: below, each "
                       f"cut group ({', '.join(where['cut_groups'])}) takes the parameter-weighted"
                       " mean of its two sides; the tensors in this dir are the exact split merge")
        else:
            comment = "split recipe whose boundary cuts no layer group: this recipe is exact"
        note = f"{note}\n# {comment}" if note else comment
        out_cfg = output_config(self.hf_config, self.spec, DTYPES[self.model.dtype])
        tokenizer_dir = self.cfg.tokenizer or self.cfg.base_model
        return write_hf_dir(out_dir, merged_tensors(self, genome, key_data), out_cfg,
                            tokenizer_from=tokenizer_dir, overwrite=overwrite,
                            extra_files={"recipe.yaml": recipe_yaml(self.ps, self.project(genome),
                                                                    note)})
