"""Prompts and images -> model inputs, by the VLM dir's own transformers processor
(`AutoProcessor`: its image processor resizes, tiles and normalises; its tokenizer expands each
`<image>` placeholder into one image token per feature). No image code of ours."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, EvomergeError


def load_processor(vlm_dir) -> object:
    """The dir's processor (cached while its files are unchanged), left-padding."""
    root = Path(vlm_dir)
    stamps = tuple(f.stat().st_mtime_ns if f.is_file() else 0 for f in
                   (root / "preprocessor_config.json", root / "processor_config.json",
                    root / "tokenizer.json"))
    return _load_processor(str(root), stamps)


@lru_cache(maxsize=8)
def _load_processor(vlm_dir: str, stamps: tuple):
    import transformers  # heavy; only VLM inputs need it

    try:
        processor = transformers.AutoProcessor.from_pretrained(vlm_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{vlm_dir}: cannot load the processor ({exc})") from None
    if not hasattr(processor, "image_processor"):
        raise CheckpointError(f"{vlm_dir}: no image processor (preprocessor_config.json)")
    processor.tokenizer.padding_side = "left"  # generation continues every row at the end
    return processor


def encode(vlm_dir, prompts: list[str], images: list,
           pad_to: int | None = None) -> dict[str, np.ndarray | None]:
    """input_ids, attention_mask (left-padded), pixel_values (None without images) and
    image_sizes (LLaVA-NeXT; else None). `images[i]` (a PIL image or None) goes with
    `prompts[i]`, which holds one image placeholder (`<image>`) per image. `pad_to`: pad every
    row to this many tokens (one compiled shape for batches of different prompts)."""
    if len(prompts) != len(images):
        raise EvomergeError(f"{len(prompts)} prompts but {len(images)} images")
    processor = load_processor(vlm_dir)
    placeholder = getattr(processor, "image_token", "<image>")
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        count = prompt.count(placeholder)
        if count != (0 if image is None else 1):
            raise EvomergeError(f"prompt {i} has {count} {placeholder} placeholders for "
                                f"{'no image' if image is None else 'one image'}")
    present = [im.convert("RGB") for im in images if im is not None]
    padding = {"padding": True} if pad_to is None else {"padding": "max_length",
                                                        "max_length": pad_to}
    batch = processor(text=list(prompts), images=present or None, return_tensors="np", **padding)
    if pad_to is not None and np.shape(batch["input_ids"])[1] != pad_to:
        raise EvomergeError(f"a prompt is {np.shape(batch['input_ids'])[1]} tokens with its image "
                            f"tokens, longer than pad_to={pad_to}")
    out = {"input_ids": np.asarray(batch["input_ids"], np.int32),
           "attention_mask": np.asarray(batch["attention_mask"], np.int32),
           "pixel_values": None, "image_sizes": None}
    if present:
        out["pixel_values"] = np.asarray(batch["pixel_values"], np.float32)
        if "image_sizes" in batch:
            out["image_sizes"] = np.asarray(batch["image_sizes"], np.int64)
    return out
