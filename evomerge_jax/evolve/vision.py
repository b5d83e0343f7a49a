"""The frozen vision side of an evolve run with `vision_model:` (issue 15, EvoVLM): the LLaVA
dir's processor turns a task record's image into pixels and its count of image tokens (at task
load, no weights read), and its vision tower and projector (read on first use, never merged) turn
a batch's pixels into image embeddings once per batch, which the population pass splices into
every candidate's embeddings (vision_splice.py).

Sources stay text LMs of the VLM's language architecture (a VLM dir among them stands for its
language tower, sources.py); the best merge is exported as a LLaVA dir (`export_vlm`).
"""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path

import jax
import numpy as np

from ..errors import ConfigError


@partial(jax.jit, static_argnames=("spec",))
def _image_embeds_jit(vision, projector, spec, tokens_bs, pixels):
    from ..vlm.features import image_embeds

    return image_embeds(vision, projector, spec, tokens_bs, pixels)


class Vision:
    """The processor, spec and (lazily) frozen weights of the run's VLM; `ImageInputs` for the
    tasks (task_images.py) and the per-batch image embeddings for the evaluator."""

    def __init__(self, path: Path):
        from ..vlm.checkpoint import is_vlm_dir, open_vlm
        from ..vlm.processor import load_processor

        if not is_vlm_dir(path):
            raise ConfigError(f"vision_model {path}: not a LLaVA or LLaVA-NeXT model dir "
                              "(config.json architectures)")
        self.path = Path(path)
        _, _, self.spec = open_vlm(path)
        self.processor = load_processor(path)
        self.image_token = getattr(self.processor, "image_token", "<image>")
        self.image_token_id = int(self.spec.image_token_id)
        self._weights = None
        self._pixels = {}  # image file -> pixels(): tasks often share images

    # ---- task_images.ImageInputs ---------------------------------------------------------
    def pixels(self, path: Path, where: str):
        """(pixel_values of one image file, its (height, width), its number of image tokens),
        all by the dir's own processor; an image used by several records is processed once."""
        from ..vlm.processor import encode
        from .task_images import open_image

        key = Path(path).resolve()
        if key not in self._pixels:
            image = open_image(key, where)
            out = encode(self.path, [self.image_token], [image])
            count = int(np.sum(out["input_ids"] == self.image_token_id))
            size = (tuple(int(x) for x in out["image_sizes"][0])
                    if out["image_sizes"] is not None else (image.height, image.width))
            self._pixels[key] = (out["pixel_values"][0], size, count)
        return self._pixels[key]

    # ---- the evaluator's hook ------------------------------------------------------------
    def weights(self):
        """(vision params, projector params), read from the dir once, float32."""
        if self._weights is None:
            from ..vlm.checkpoint import frozen_params

            vision, projector = frozen_params(self.path, np.float32)
            self._weights = (jax.device_put(vision), jax.device_put(projector))
        return self._weights

    def embeds(self, tokens_bs, pixel_values, image_sizes, has_image):
        """(image embeds [B, S, D] float32, mask [B, S] bool) of one batch: the features of the
        rows with an image at their image tokens (vlm/features.py)."""
        from ..vlm.features import image_embeds

        has = np.asarray(has_image, bool)
        vision, projector = self.weights()
        pixels = np.asarray(pixel_values)[has] if has.any() else None
        if self.spec.is_next:  # any-res tiling: host-side shapes (vlm/features.py)
            embeds, mask = image_embeds(vision, projector, self.spec, np.asarray(tokens_bs),
                                        pixels, np.asarray(image_sizes)[has])
        else:  # one compiled program per batch shape
            embeds, mask = _image_embeds_jit(vision, projector, self.spec, tokens_bs, pixels)
        return np.asarray(embeds, np.float32), np.asarray(mask, bool)

    def check_language(self, spec, where: str) -> None:
        """The sources' architecture must be the VLM's language tower's."""
        if spec != self.spec.text:
            raise ConfigError(f"{where}: the models' architecture ({spec.architecture}, hidden "
                              f"{spec.hidden_size}, {spec.num_layers} layers, vocab "
                              f"{spec.vocab_size}) is not the language tower of vision_model "
                              f"{self.path} ({self.spec.text.architecture}, hidden "
                              f"{self.spec.text.hidden_size}, {self.spec.text.num_layers} layers, "
                              f"vocab {self.spec.text.vocab_size})")


def vision_for(cfg) -> Vision | None:
    """The run's `Vision`, or None without `vision_model`."""
    return None if cfg.vision_model is None else Vision(cfg.vision_model)


def tokenizer_dir(cfg, fallback: Path) -> Path:
    """The tasks' tokenizer: `tokenizer`, else the VLM's (it knows the image token), else
    `fallback` (the base model, or DFS's model A)."""
    return Path(cfg.tokenizer or cfg.vision_model or fallback)


def export_as_vlm(vision: Vision, write_text, out_dir: Path, *, overwrite: bool) -> Path:
    """A merged language tower as a LLaVA dir at `out_dir`: `write_text(dir, overwrite)` writes
    the text LM (the search's own exporter) beside `out_dir`, which then becomes the language
    tower of a copy of the VLM (its frozen vision tower, projector and processor files;
    vlm/export.py). The text dir is removed afterwards; `out_dir` appears complete or not at
    all."""
    from ..checkpoint import load
    from ..vlm.export import write_vlm_dir

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.text-") as tmp:
        text_dir = Path(write_text(Path(tmp) / "language_model", False))
        text = load(text_dir)
        notes = {name: (text_dir / name).read_text() for name in ("recipe.yaml", "path.json")
                 if (text_dir / name).is_file()}  # the search's own notes, kept beside
        written = Path(write_vlm_dir(vision.path, text.params, text.spec, out_dir,
                                     overwrite=overwrite, extra_files=notes))
        if (text_dir / "path.png").is_file():  # DFS's picture of the path (binary)
            shutil.copyfile(text_dir / "path.png", written / "path.png")
    return written
