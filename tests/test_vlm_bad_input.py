"""Unsupported or broken LLaVA dirs and inputs: one line naming the config key, tensor or input;
`evomerge` exits 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from vlm_models import built_case

import evomerge_jax
from evomerge_jax.cli import main
from evomerge_jax.errors import EvomergeError


def _variant(tmp_path, tmp_path_factory, case: str, edit=None, drop: str | None = None):
    src = built_case(case, tmp_path_factory)[0]
    dest = tmp_path / "variant"
    shutil.copytree(src, dest)
    if edit is not None:
        cfg = json.loads((dest / "config.json").read_text())
        edit(cfg)
        (dest / "config.json").write_text(json.dumps(cfg))
    if drop is not None:
        tensors = load_file(dest / "model.safetensors")
        del tensors[drop]
        save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def _set(path: str, value):
    def edit(cfg):
        *parents, key = path.split(".")
        for p in parents:
            cfg = cfg[p]
        cfg[key] = value
    return edit


@pytest.mark.parametrize("case,key,value", [
    ("llava_clip_default", "vision_config.model_type", "dinov2"),
    ("llava_clip_default", "vision_feature_select_strategy", "cls_only"),
    ("llava_clip_default", "vision_feature_layer", 9),
    ("llava_clip_default", "text_config.model_type", "gpt2"),
    ("next_clip_default", "multimodal_patch_merge_type", "flat"),
    ("next_clip_default", "image_grid_pinpoints", [[30, 56]]),
    ("next_clip_default", "vision_feature_select_strategy", "full"),
])
def test_unsupported_config_names_the_key(case, key, value, tmp_path, tmp_path_factory, capsys):
    path = _variant(tmp_path, tmp_path_factory, case, _set(key, value))
    capsys.readouterr()
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and key.split(".")[-1] in err, err
    assert key.split(".")[0] in err, err
    with pytest.raises(EvomergeError):
        evomerge_jax.load(path)


def test_missing_vision_tensor_is_named(tmp_path, tmp_path_factory):
    name = "vision_tower.encoder.layers.1.mlp.fc1.weight"
    path = _variant(tmp_path, tmp_path_factory, "llava_clip_default", drop=name)
    with pytest.raises(EvomergeError, match=name.replace(".", r"\.")):
        evomerge_jax.load(path)


def test_images_that_do_not_match_the_image_tokens(tmp_path_factory):
    _, _, ckpt, enc = built_case("llava_clip_default", tmp_path_factory)
    with pytest.raises(EvomergeError, match="image tokens"):
        evomerge_jax.logits(ckpt, enc["input_ids"], enc["attention_mask"],
                            pixel_values=enc["pixel_values"][:-1])
    with pytest.raises(EvomergeError, match="takes no pixel_values"):
        evomerge_jax.logits(ckpt.language, enc["input_ids"],
                            pixel_values=np.zeros((1, 3, 28, 28), np.float32))
