"""Vision-language models (LLaVA-1.5, LLaVA-NeXT): a frozen vision tower and projector in front of
a text decoder that the rest of the engine already runs, merges and evolves.

One job per file: `spec` (the config), `checkpoint` (HF dir -> pytrees), `vision` (the CLIP and
SigLIP towers), `anyres` (LLaVA-NeXT's tiling and unpadding, host-side shape logic), `features`
(image embeddings placed at the image-token positions), `forward` (logits and generation),
`processor` (transformers' AutoProcessor), `export` (a LLaVA dir from a language tower),
`extract` (`evomerge extract-lm`), `info` (`evomerge info` of a LLaVA dir).
"""

from .checkpoint import VlmCheckpoint, is_vlm_dir, load_vlm
from .spec import VisionSpec, VlmSpec, vlm_spec_from_config

__all__ = ["VisionSpec", "VlmCheckpoint", "VlmSpec", "is_vlm_dir", "load_vlm",
           "vlm_spec_from_config"]
