"""`evomerge info` of a LLaVA dir: both towers, from config.json and the safetensors headers."""

from __future__ import annotations

import math
from pathlib import Path

from .checkpoint import language_reader, open_vlm


def vlm_info(path: str | Path, text_info) -> dict[str, object]:
    """`text_info(reader)`: the text model's description (inspect.py), for the language tower."""
    raw, layout, spec = open_vlm(path)
    v = spec.vision
    count = lambda prefix: sum(math.prod(raw.shape(n)) for n in raw.names()  # noqa: E731
                               if n.startswith(prefix))
    layers = raw.config.get("vision_feature_layer", -2)  # as the config gives it
    info: dict[str, object] = {
        "architecture": spec.architecture,
        "vision_tower": (f"{v.kind.upper()}, {v.num_layers} layers, hidden {v.hidden_size}, "
                         f"{v.num_heads} heads, {v.image_size}px tiles of {v.patch_size}px "
                         f"patches"),
        "vision_params": f"{count(layout.vision):,}",
        "features": (f"vision_feature_layer {layers} of {v.num_layers + 1} hidden states, "
                     f"strategy {spec.select_strategy}: {spec.tokens_per_tile} tokens per tile"),
        "projector": (f"linear {v.hidden_size * len(spec.feature_layers)} -> "
                      f"{spec.text.hidden_size}, {spec.projector_act}, linear "
                      f"{spec.text.hidden_size} -> {spec.text.hidden_size}"),
        "image_token": spec.image_token_id,
    }
    if spec.is_next:
        info["anyres_grids"] = ", ".join(f"{h}x{w}" for h, w in spec.grid_pinpoints)
    language = text_info(language_reader(path))
    info.update({("language" if k == "architecture" else k): val for k, val in language.items()})
    return info
