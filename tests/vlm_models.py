"""Tiny seeded random LLaVA-1.5 and LLaVA-NeXT dirs, built with transformers (the oracle) and
saved with `save_pretrained` together with a processor: a CLIP/SigLIP (or LLaVA-NeXT) image
processor and the repo's word-level tokenizer with the `<image>` token added as a special token.

Shared by the model-side and the evolve-side tests (see /work/notes/vlm_contract.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from evomerge_jax.tokenizer_build import SPECIALS, word_vocab, write_word_tokenizer
from tiny_models import make_config

IMAGE_TOKEN = "<image>"
WORDS = ("What", "is", "in", "the", "image", "?", "a", "red", "blue", "green", "circle",
         "square", "one", "two", "three", "USER:", "ASSISTANT:", "Describe", "colour", "shape")
VOCAB_SIZE = 97


def vision_config(kind: str, image_size: int = 28, patch_size: int = 7, **overrides):
    common = {"hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 3,
              "num_attention_heads": 4, "image_size": image_size, "patch_size": patch_size}
    if kind == "clip":
        return transformers.CLIPVisionConfig(**common, projection_dim=16, **overrides)
    if kind == "siglip":
        return transformers.SiglipVisionConfig(**common, **overrides)
    raise ValueError(kind)


def build_tokenizer(path: Path) -> int:
    """The word tokenizer with `<image>` as a special token; returns its id."""
    vocab = word_vocab((*WORDS, IMAGE_TOKEN), VOCAB_SIZE)
    write_word_tokenizer(vocab, path, specials=(*SPECIALS, IMAGE_TOKEN), bos="<s>", eos="</s>",
                         pad="<pad>", unk="<unk>")
    return vocab[IMAGE_TOKEN]


def _perturb(model, seed: int) -> None:
    """Every tensor matters: norms near 1, biases and weights random."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))


def image_processor(kind: str, next_: bool, image_size: int, pinpoints=None):
    if next_:
        return transformers.LlavaNextImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints)
    if kind == "siglip":
        return transformers.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    return transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size})


def build_vlm(path: Path, *, kind: str = "clip", next_: bool = False, family: str = "llama",
              feature_layer=-2, strategy: str = "default", image_size: int = 28,
              patch_size: int = 7, pinpoints=None, seed: int = 0, dtype=torch.float32,
              text_overrides: dict | None = None):
    """Write a tiny LLaVA (or LLaVA-NeXT) dir with its processor; returns the torch model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    image_token_id = build_tokenizer(path)
    text = make_config(family, num_hidden_layers=2, max_position_embeddings=512,
                       **(text_overrides or {}))
    vcfg = vision_config(kind, image_size, patch_size)
    if next_:
        pinpoints = pinpoints or [[image_size, 2 * image_size], [2 * image_size, image_size],
                                  [2 * image_size, 2 * image_size]]
        cfg = transformers.LlavaNextConfig(
            vision_config=vcfg, text_config=text, image_token_id=image_token_id,
            vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy,
            image_grid_pinpoints=pinpoints)
        cls = transformers.LlavaNextForConditionalGeneration
        proc_cls = transformers.LlavaNextProcessor
    else:
        cfg = transformers.LlavaConfig(
            vision_config=vcfg, text_config=text, image_token_id=image_token_id,
            vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy)
        cls, proc_cls = transformers.LlavaForConditionalGeneration, transformers.LlavaProcessor
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    _perturb(model, seed)
    model.to(dtype).save_pretrained(path)
    model.to(torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    processor = proc_cls(image_processor=image_processor(kind, next_, image_size, pinpoints),
                         tokenizer=tokenizer, patch_size=patch_size,
                         vision_feature_select_strategy=strategy,
                         num_additional_image_tokens=1 if kind == "clip" else 0)
    processor.save_pretrained(path)
    return model


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# Shared test cases: name -> builder arguments. Both towers, feature layers (negative, positive,
# a list) and select strategies (default drops CLS, full keeps every token). One text family and
# one padded length (PAD_TO): the language tower compiles once for every case.
CASES = {
    "llava_clip_default": {"kind": "clip", "feature_layer": -2, "strategy": "default"},
    "llava_siglip_full_list": {"kind": "siglip", "feature_layer": [-1, 0], "strategy": "full"},
    "next_clip_default": {"kind": "clip", "next_": True, "feature_layer": -1,
                          "strategy": "default"},
    "next_siglip_full": {"kind": "siglip", "next_": True, "feature_layer": 1, "strategy": "full"},
}
# (width, height) per image: wide, tall, square, smaller than a tile; None: a text-only row.
SIZES = [(40, 30), None, (20, 50), (28, 28), (13, 9)]
PAD_TO = 80
PROMPTS = ["USER: <image> What is in the image ? ASSISTANT:", "USER: What is the colour ?",
           "<image> Describe the shape", "USER: <image> one two three", "<image> colour ?"]
_BUILT: dict = {}


def built_case(name: str, tmp_path_factory):
    """A case built once per test session: (dir, torch model, our checkpoint, encoded inputs of
    PROMPTS with images of SIZES)."""
    if name not in _BUILT:
        from evomerge_jax import load
        from evomerge_jax.vlm.processor import encode

        path = tmp_path_factory.mktemp(name)
        model = build_vlm(path, seed=len(name), **CASES[name])
        images = [None if s is None else random_image(*s, seed=i) for i, s in enumerate(SIZES)]
        _BUILT[name] = (path, model, load(path), encode(path, PROMPTS, images, pad_to=PAD_TO))
    return _BUILT[name]


def torch_inputs(enc: dict) -> dict:
    return {k: torch.as_tensor(v) for k, v in enc.items() if v is not None}
