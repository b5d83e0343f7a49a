"""Read a LLaVA / LLaVA-NeXT HF dir into pytrees: `params = {"vision", "projector", "language"}`.

`language` is exactly a text `Checkpoint`'s params tree (arch.py), so every merge, PS and DFS
code path takes it as a source. Two tensor-name layouts are read: the one `save_pretrained`
writes and the llava-hf checkpoints use (`language_model.model.*`, `vision_tower.*`,
`multi_modal_projector.*`, `image_newline`) and transformers 5's module layout (`model.*`).

Vision pytree (HF orientation, layers stacked on axis 0 as for the text decoder):
    {"patch_embed": [D, C, P, P], "patch_bias": [D] (SigLIP), "class_embed": [D] (CLIP),
     "pos_embed": [N, D], "pre_norm_w", "pre_norm_b": [D] (CLIP), "layers": {short: [L, ...]}}
Projector pytree: {"w1": [T, D·F], "b1", "w2": [T, T], "b2", "image_newline": [T] (NeXT)}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..checkpoint import DTYPES, Checkpoint, TensorReader, load_text
from ..errors import CheckpointError, ConfigError
from .spec import VLM_ARCHITECTURES, VlmSpec, text_config, vlm_spec_from_config

VISION_LAYER_TENSORS = {
    "ln1_w": "layer_norm1.weight", "ln1_b": "layer_norm1.bias",
    "q_w": "self_attn.q_proj.weight", "q_b": "self_attn.q_proj.bias",
    "k_w": "self_attn.k_proj.weight", "k_b": "self_attn.k_proj.bias",
    "v_w": "self_attn.v_proj.weight", "v_b": "self_attn.v_proj.bias",
    "o_w": "self_attn.out_proj.weight", "o_b": "self_attn.out_proj.bias",
    "ln2_w": "layer_norm2.weight", "ln2_b": "layer_norm2.bias",
    "fc1_w": "mlp.fc1.weight", "fc1_b": "mlp.fc1.bias",
    "fc2_w": "mlp.fc2.weight", "fc2_b": "mlp.fc2.bias",
}
_VISION_GLOBALS = {"patch_embed": "embeddings.patch_embedding.weight",
                   "patch_bias": "embeddings.patch_embedding.bias",
                   "class_embed": "embeddings.class_embedding",
                   "pos_embed": "embeddings.position_embedding.weight",
                   "pre_norm_w": "pre_layrnorm.weight", "pre_norm_b": "pre_layrnorm.bias"}
_PROJECTOR = {"w1": "linear_1.weight", "b1": "linear_1.bias", "w2": "linear_2.weight",
              "b2": "linear_2.bias"}
# Tensors of the tower that features never read (the final norm, SigLIP's pooling head).
_UNUSED_VISION = ("post_layernorm.", "head.")


@dataclass(frozen=True)
class VlmCheckpoint:
    spec: VlmSpec
    params: dict
    config: dict
    path: Path | None = field(default=None, compare=False)

    @property
    def language(self) -> Checkpoint:
        """The language tower as a text `Checkpoint` (its config: the text config)."""
        return Checkpoint(spec=self.spec.text, params=self.params["language"],
                          config=text_config(self.config, "config.json"), source_dir=self.path)

    @property
    def dtype(self):
        return self.params["language"]["embed"].dtype


def read_vlm_config(path: str | Path) -> dict | None:
    """The config of a LLaVA-family dir, or None when `path` is not one."""
    cfg_path = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    return cfg if isinstance(archs, list) and archs and archs[0] in VLM_ARCHITECTURES else None


def is_vlm_dir(path: str | Path) -> bool:
    return read_vlm_config(path) is not None


class VlmLayout:
    """Where each part's tensors live in this dir's names."""

    def __init__(self, names):
        modern = any(n.startswith("model.language_model.") for n in names)
        self.modern = modern
        self.language = "model.language_model." if modern else "language_model.model."
        self.lm_head = "lm_head.weight" if modern else "language_model.lm_head.weight"
        self.projector = ("model." if modern else "") + "multi_modal_projector."
        self.newline = ("model." if modern else "") + "image_newline"
        tower = ("model." if modern else "") + "vision_tower."
        nested = any(n.startswith(tower + "vision_model.") for n in names)
        self.vision = tower + ("vision_model." if nested else "")

    def text_name(self, stored: str) -> str | None:
        """The text-LM name of a language-tower tensor (None for the other parts)."""
        if stored.startswith(self.language):
            return "model." + stored[len(self.language):]
        return "lm_head.weight" if stored == self.lm_head else None

    def stored_name(self, text_name: str) -> str:
        if text_name == "lm_head.weight":
            return self.lm_head
        return self.language + text_name[len("model."):]


def open_vlm(path: str | Path) -> tuple[TensorReader, VlmLayout, VlmSpec]:
    """The raw reader of every tensor, the name layout and the spec of a VLM dir."""
    raw = TensorReader(path, need_spec=False)
    try:
        spec = vlm_spec_from_config(raw.config, where=str(raw.root / "config.json"))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return raw, VlmLayout(raw.names()), spec


def language_reader(path: str | Path) -> TensorReader:
    """A `TensorReader` of the language tower under text-LM names (model.*, lm_head.weight), with
    the text config and spec: what `load_text`, the merge and the exporters read."""
    raw, layout, spec = open_vlm(path)
    reader = TensorReader(path, need_spec=False)
    reader.config, reader.spec = text_config(raw.config, "config.json"), spec.text
    files, stored = {}, {}
    for name, file in raw.files.items():
        text = layout.text_name(name)
        if text is not None:
            files[text], stored[text] = file, name
    reader.files, reader.stored = files, stored
    return reader


def open_reader(path: str | Path, need_spec: bool = True) -> TensorReader:
    """The reader of a text-LM dir, or of a LLaVA dir's language tower under text-LM names (so a
    VLM is a source wherever a text model's tensors are read: `evomerge merge`)."""
    return language_reader(path) if is_vlm_dir(path) else TensorReader(path, need_spec)


def _read(raw: TensorReader, name: str, cast) -> jnp.ndarray:
    return jnp.asarray(raw.read(name, cast))


def _vision_params(raw: TensorReader, layout: VlmLayout, spec: VlmSpec, cast) -> dict:
    v = spec.vision
    wanted = dict(_VISION_GLOBALS)
    if v.kind == "clip":
        wanted.pop("patch_bias")
    else:
        for key in ("class_embed", "pre_norm_w", "pre_norm_b"):
            wanted.pop(key)
    params = {k: _read(raw, layout.vision + hf, cast) for k, hf in wanted.items()}
    want_pos = (v.num_positions, v.hidden_size)
    if tuple(params["pos_embed"].shape) != want_pos:
        raise CheckpointError(f"{raw.root}: tensor {layout.vision + wanted['pos_embed']!r} has "
                              f"shape {list(params['pos_embed'].shape)}, expected {list(want_pos)}")
    params["layers"] = {
        short: jnp.asarray(np.stack([raw.read(f"{layout.vision}encoder.layers.{i}.{hf}", cast)
                                     for i in range(v.num_layers)]))
        for short, hf in VISION_LAYER_TENSORS.items()}
    return params


def _projector_params(raw: TensorReader, layout: VlmLayout, spec: VlmSpec, cast) -> dict:
    keys = _PROJECTOR if spec.projector_bias else {"w1": "linear_1.weight", "w2": "linear_2.weight"}
    params = {k: _read(raw, layout.projector + hf, cast) for k, hf in keys.items()}
    want = (spec.text.hidden_size, spec.vision.hidden_size * len(spec.feature_layers))
    if tuple(params["w1"].shape) != want:
        raise CheckpointError(f"{raw.root}: tensor {layout.projector + 'linear_1.weight'!r} has "
                              f"shape {list(params['w1'].shape)}, expected {list(want)}")
    if spec.is_next:
        params["image_newline"] = _read(raw, layout.newline, cast)
    return params


def _check_unexpected(raw: TensorReader, layout: VlmLayout, spec: VlmSpec) -> None:
    known_prefixes = (layout.language, layout.lm_head, layout.projector, layout.newline)
    problems = []
    for name in raw.names():
        if name.startswith(known_prefixes):
            continue
        rest = name[len(layout.vision):] if name.startswith(layout.vision) else None
        if rest is None or not (rest.startswith(_UNUSED_VISION) or rest.startswith(
                ("embeddings.", "encoder.layers.", "pre_layrnorm."))):
            problems.append(f"unexpected tensor {name!r} for {spec.architecture}")
    if problems:
        raise CheckpointError(f"{raw.root}: " + "; ".join(problems))


def frozen_params(path: str | Path, cast=np.float32) -> tuple[dict, dict]:
    """(vision tower params, projector params) of a LLaVA dir, without reading its language tower:
    the parts an EvoVLM run keeps frozen."""
    raw, layout, spec = open_vlm(path)
    return (_vision_params(raw, layout, spec, cast), _projector_params(raw, layout, spec, cast))


def load_vlm(path: str | Path, dtype: str | None = None) -> VlmCheckpoint:
    """Load a LLaVA / LLaVA-NeXT dir; `dtype` casts every tower (None keeps the file's)."""
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    raw, layout, spec = open_vlm(path)
    _check_unexpected(raw, layout, spec)
    language = load_text(language_reader(path), dtype)
    cast = DTYPES[dtype] if dtype else None
    params = {"vision": _vision_params(raw, layout, spec, cast),
              "projector": _projector_params(raw, layout, spec, cast),
              "language": language.params}
    return VlmCheckpoint(spec=spec, params=params, config=raw.config, path=raw.root)
