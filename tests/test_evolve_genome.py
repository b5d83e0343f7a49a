"""The PS genome layout: group assignment, the paper's gene count, bounds and clipping."""

import numpy as np

from evomerge_jax.ps.genome import GenomeLayout, clip


def layout(**kw):
    base = dict(params=("weight", "density", "lambda"), per_source=(True, True, False),
                bounds=((-1.0, 1.0), (0.0, 1.0), (0.0, 2.0)), num_sources=3, num_layers=5,
                layers_per_group=2, split_attn_mlp=True, globals_mode="own")
    return GenomeLayout(**{**base, **kw})


def test_groups_of_layers_sides_and_globals():
    lay = layout()
    # 3 layer groups (0-1, 2-3, 4) x 2 sides + 1 global set
    assert lay.num_groups == 7
    assert lay.num_dims == 7 * 3 + 7 * 3 + 7
    np.testing.assert_array_equal(lay.layer_table(), [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5]])
    assert lay.kind_of("q_proj") == 0 and lay.kind_of("attn_norm") == 0
    assert lay.kind_of("down_proj") == 1 and lay.kind_of("mlp_norm") == 1
    assert lay.global_group("embed") == lay.global_group("lm_head") == 6
    assert lay.group_label(2) == "layers 2-3 attn" and lay.group_label(5) == "layer 4 mlp"
    near = layout(globals_mode="nearest")
    assert near.global_group("embed") == 0 and near.global_group("lm_head") == 4
    assert layout(split_attn_mlp=False, layers_per_group=5).num_groups == 2


def test_paper_gene_count():
    """Per layer and per source, weight and density, embeddings included (32 layers, 3 sources)."""
    lay = GenomeLayout(("weight", "density"), (True, True), ((0, 1), (0, 1)), 3, 32, 1, False, "own")
    assert lay.num_dims == (32 + 1) * 3 * 2


def test_values_roundtrip_and_bounds():
    lay = layout()
    genome = np.random.default_rng(0).uniform(size=(4, lay.num_dims))
    values = lay.to_values(genome)
    assert values["weight"].shape == (4, 7, 3) and values["lambda"].shape == (4, 7)
    np.testing.assert_allclose(values["weight"], -1 + 2 * lay.unflatten(genome)["weight"])
    np.testing.assert_allclose(lay.from_values(values), genome)
    np.testing.assert_allclose(lay.to_values(np.full(lay.num_dims, 0.5))["lambda"], 1.0)


def test_clip_counts_out_of_bound_genes():
    genes, count = clip(np.array([[-0.2, 0.5, 1.3], [np.nan, 1.0, 0.0]]))
    assert count == 3
    np.testing.assert_array_equal(genes[0], [0.0, 0.5, 1.0])
    assert np.isnan(genes[1, 0])
