"""Images in task records: a JSONL record's `image` field (a path relative to the JSONL file) is
checked when the task loads, and with a vision model (`vision_model:`) its prompt's single image
token is expanded to the image's feature tokens and its pixels kept with the split.

The pixels come from the vision model's own processor (`ImageInputs`, built by the search from
`vlm/processor.py`): no image code here beyond opening the file. A split of a task with images
carries `pixel_values` [N, ...] (zeros for text-only rows), `image_sizes` [N, 2] and `has_image`
[N]; the evaluator turns a batch of them into image embeddings once per batch (`image_batch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .task_types import Encoded, TaskError

IMAGE_FIELD = "image"


class ImageInputs(Protocol):
    """The vision side of a task's images (the search builds it from the VLM dir)."""

    image_token_id: int
    image_token: str

    def pixels(self, path: Path, where: str) -> tuple[np.ndarray, tuple[int, int], int]:
        """(pixel_values of the image file, its (height, width), number of feature tokens);
        `where` names the record in errors (`open_image`)."""


def image_path(record: dict, jsonl: Path, where: str) -> Path | None:
    """The record's image file (None when it has none), checked readable as an image."""
    value = record.get(IMAGE_FIELD)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TaskError(f"{where}: field {IMAGE_FIELD!r} must be a path (relative to the JSONL "
                        f"file), got {value!r}")
    path = Path(jsonl).parent / value
    open_image(path, where)
    return path


def open_image(path: Path, where: str):
    """The image as RGB (Pillow), or a TaskError naming the record."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise TaskError(f"{where}: image {path} does not exist")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise TaskError(f"{where}: cannot read image {path} ({exc})") from None


def expand_prompt(encoded: Encoded, path: Path, images: ImageInputs | None, where: str):
    """(the record with its image token expanded, (pixel_values, image size)) for a record with
    an image; the prompt must hold the image token exactly once."""
    if images is None:
        raise TaskError(f"{where}: the record has an image but the config names no vision_model")
    at = [i for i, t in enumerate(encoded.prompt) if t == images.image_token_id]
    if len(at) != 1:
        raise TaskError(f"{where}: a record with an image needs its prompt to hold the image "
                        f"token {images.image_token!r} exactly once (found {len(at)}); put it in "
                        "the task's prompt template")
    pixels, size, count = images.pixels(path, where)
    prompt = encoded.prompt[:at[0]] + [images.image_token_id] * count + encoded.prompt[at[0] + 1:]
    return Encoded(prompt, encoded.target, encoded.answer, encoded.label), (pixels, size)


def image_arrays(pixels: list) -> dict:
    """A split's image arrays from per-record (pixel_values, size) or None; {} when no record
    has an image. Pixel arrays of different leading sizes (LLaVA-NeXT's tiles) are zero-padded
    to the largest."""
    shown = [p for p in pixels if p is not None]
    if not shown:
        return {}
    shapes = [np.shape(p[0]) for p in shown]
    full = tuple(max(s[d] for s in shapes) for d in range(len(shapes[0])))
    values = np.zeros((len(pixels),) + full, np.float32)
    sizes = np.zeros((len(pixels), 2), np.int64)
    for i, p in enumerate(pixels):
        if p is not None:
            values[(i,) + tuple(slice(0, n) for n in np.shape(p[0]))] = p[0]
            sizes[i] = p[1]
    return {"pixel_values": values, "image_sizes": sizes,
            "has_image": np.array([p is not None for p in pixels])}
