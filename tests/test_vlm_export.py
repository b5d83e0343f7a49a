"""A VLM's language tower out and back in: the LLaVA export writer (vlm/export.py), `evomerge
extract-lm`, and `evomerge merge` with LLaVA sources. Oracles: transformers (logits of the written
dirs), the float64 merge reference, mergekit 0.1.5 (black-box, where it merges the language tower).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from merge_reference import REFERENCES
from safetensors.numpy import load_file, save_file
from vlm_models import build_vlm, built_case, torch_inputs

import evomerge_jax
from evomerge_jax.vlm.checkpoint import open_reader
from evomerge_jax.cli import main
from evomerge_jax.vlm.export import write_vlm_dir
from evomerge_jax.vlm.features import image_embeds
from evomerge_jax.vlm.forward import language_forward


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_export_swaps_the_language_tower_and_transformers_agrees(tmp_path, tmp_path_factory):
    """NeXT A's vision tower and projector with LLaVA B's language tower, its layers reordered (a
    DFS-style path): transformers loads the dir and its logits equal ours."""
    path_a, _, ck_a, enc = built_case("next_clip_default", tmp_path_factory)
    _, _, ck_b, _ = built_case("llava_clip_default", tmp_path_factory)
    ids = np.asarray([1, 0])
    language = dict(ck_b.params["language"])
    language["layers"] = jax.tree_util.tree_map(lambda x: x[ids], language["layers"])
    spec = ck_b.spec.text.with_num_layers((False,) * 2)
    out = write_vlm_dir(path_a, language, spec, tmp_path / "swapped",
                        extra_files={"note.txt": "swap"})
    assert (out / "processor_config.json").is_file() and (out / "note.txt").is_file()
    model = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    with torch.no_grad():
        ref = model(**torch_inputs(enc)).logits.numpy()
    embeds, mask = image_embeds(ck_a.params["vision"], ck_a.params["projector"], ck_a.spec,
                                enc["input_ids"], enc["pixel_values"], enc["image_sizes"])
    ours = np.asarray(language_forward(language, spec, enc["input_ids"], enc["attention_mask"],
                                       embeds, mask))
    real = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    back = evomerge_jax.load(out)
    assert back.spec.text == spec and _leaves_equal(back.params["language"], language)
    assert _leaves_equal(back.params["vision"], ck_a.params["vision"])


def test_extract_lm_writes_the_language_model(tmp_path, tmp_path_factory, capsys):
    path, model, ckpt, enc = built_case("llava_clip_default", tmp_path_factory)
    assert main(["extract-lm", str(path), str(tmp_path / "lm")]) == 0
    text = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    ids = torch.as_tensor(enc["input_ids"][1:2])  # the text-only row
    mask = torch.as_tensor(enc["attention_mask"][1:2])
    with torch.no_grad():
        np.testing.assert_allclose(text(input_ids=ids, attention_mask=mask).logits.numpy(),
                                   model(input_ids=ids, attention_mask=mask).logits.numpy(),
                                   atol=1e-5, rtol=0)
    lm = evomerge_jax.load(tmp_path / "lm")
    assert lm.spec == ckpt.spec.text and _leaves_equal(lm.params, ckpt.params["language"])
    assert (tmp_path / "lm" / "tokenizer.json").is_file()
    assert main(["info", str(path)]) == 0
    described = capsys.readouterr().out
    assert "vision_tower   CLIP, 3 layers" in described and "language       LlamaForCausalLM" in (
        described)


def test_merge_vlm_with_a_text_model_matches_the_float64_reference(tmp_path, tmp_path_factory):
    """task_arithmetic over a LLaVA base, a LLaVA-NeXT and a plain text LM (another VLM's
    extracted language model): the language tower merged, the base's vision tower and projector
    kept."""
    base, _, ck_base, _ = built_case("llava_clip_default", tmp_path_factory)
    other, _, _, _ = built_case("next_siglip_full", tmp_path_factory)
    donor, _, _, _ = built_case("llava_siglip_full_list", tmp_path_factory)
    assert main(["extract-lm", str(donor), str(tmp_path / "text")]) == 0
    params = {"weight": [0.6, -0.5]}
    cfg = tmp_path / "merge.yml"
    cfg.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                   f"  - model: {other}\n    parameters: {{weight: 0.6}}\n"
                   f"  - model: {tmp_path / 'text'}\n    parameters: {{weight: -0.5}}\n"
                   "dtype: float32\n")
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--quiet"]) == 0
    readers = [open_reader(p) for p in (base, other, tmp_path / "text")]
    merged = open_reader(tmp_path / "out")
    assert sorted(merged.names()) == sorted(readers[0].names())
    for name in merged.names():
        b, *srcs = (r.read(name).astype(np.float64) for r in readers)
        expected = REFERENCES["task_arithmetic"](b, np.stack(srcs), params, {})
        np.testing.assert_allclose(merged.read(name), expected, rtol=1e-5, atol=1e-6, err_msg=name)
    out = evomerge_jax.load(tmp_path / "out")  # the LLaVA writer's dirs load in transformers:
    assert out.spec == ck_base.spec  # test_export_swaps_the_language_tower_...
    assert _leaves_equal(out.params["vision"], ck_base.params["vision"])
    assert _leaves_equal(out.params["projector"], ck_base.params["projector"])
    assert (tmp_path / "out" / "processor_config.json").is_file()


def _modern_layout(src, dest) -> None:
    """A copy of a LLaVA dir with transformers 5's module names (model.language_model.*, ...):
    the layout mergekit 0.1.5 merges the language tower of (from save_pretrained's names it
    writes the vision tower and projector only, measured black-box)."""
    dest.mkdir()
    for item in src.iterdir():
        if item.name != "model.safetensors":
            (dest / item.name).write_bytes(item.read_bytes())
    renamed = {}
    for name, value in load_file(src / "model.safetensors").items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name[len("language_model.model."):]
        elif name == "language_model.lm_head.weight":
            name = "lm_head.weight"
        else:
            name = "model." + name
        renamed[name] = value
    save_file(renamed, dest / "model.safetensors", metadata={"format": "pt"})


def test_merge_language_tower_matches_mergekit(tmp_path, tmp_path_factory):
    pytest.importorskip("mergekit", reason="mergekit 0.1.5 (the test extra) is not installed")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    build_vlm(tmp_path / "b_legacy", kind="clip", seed=7)  # mergekit merges the projectors too:
    # the two need the same vision tower shape
    _modern_layout(built_case("llava_clip_default", tmp_path_factory)[0], tmp_path / "a")
    _modern_layout(tmp_path / "b_legacy", tmp_path / "b")
    text = (f"merge_method: linear\nmodels:\n  - model: {tmp_path / 'a'}\n    parameters: "
            f"{{weight: 0.3}}\n  - model: {tmp_path / 'b'}\n    parameters: {{weight: 0.7}}\n"
            "dtype: float32\n")
    (tmp_path / "m.yml").write_text(text)
    assert main(["merge", str(tmp_path / "m.yml"), str(tmp_path / "ours"), "--quiet"]) == 0
    import yaml
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "theirs"),
              options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False,
                                   write_model_card=False, quiet=True))
    ours, theirs = load_file(tmp_path / "ours" / "model.safetensors"), {}
    for file in (tmp_path / "theirs").glob("*.safetensors"):
        theirs.update(load_file(file))
    assert sorted(ours) == sorted(theirs)
    a = load_file(tmp_path / "a" / "model.safetensors")
    language = [n for n in ours if n.startswith("model.language_model.") or n == "lm_head.weight"]
    assert len(language) == 2 + 9 * 2 + 1
    for name in ours:
        if name in language:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-7,
                                       err_msg=name)
        else:  # mergekit merges the vision tower and projector too; we keep the base's
            np.testing.assert_array_equal(ours[name], a[name], err_msg=name)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [
        "LlavaForConditionalGeneration"]
