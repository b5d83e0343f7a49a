"""A LLaVA / LLaVA-NeXT HF config becomes a frozen, hashable `VlmSpec` (a jit static argument).

Supported: `LlavaForConditionalGeneration` and `LlavaNextForConditionalGeneration` with a CLIP or
SigLIP vision tower, an int or a list of `vision_feature_layer`s, the `default` (drop CLS) or
`full` select strategy, and any language model the text decoder supports (families.py).
Everything else is refused with one line naming the config key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import ModelSpec
from ..errors import ConfigError
from ..families import SUPPORTED_ARCHITECTURES, spec_from_config

VLM_ARCHITECTURES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
VISION_KINDS = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
_ACTS = ("gelu", "gelu_pytorch_tanh", "quick_gelu", "gelu_new", "relu", "silu")
# A text config without `architectures`: its model_type names the causal-LM class.
_TEXT_ARCH_BY_TYPE = {a.removesuffix("ForCausalLM").lower(): a for a in SUPPORTED_ARCHITECTURES}


@dataclass(frozen=True)
class VisionSpec:
    """A CLIP or SigLIP vision transformer (CLIP: class token, pre-norm, conv without bias)."""

    kind: str            # "clip" | "siglip"
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int
    layer_norm_eps: float
    hidden_act: str

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid * self.grid + (1 if self.kind == "clip" else 0)


@dataclass(frozen=True)
class VlmSpec:
    architecture: str
    vision: VisionSpec
    text: ModelSpec
    feature_layers: tuple[int, ...]   # hidden-state indices, concatenated on features
    feature_layer_is_list: bool       # the config gave a list (kept for the export's config)
    select_strategy: str              # "default" (drop the first token) | "full"
    projector_act: str
    projector_bias: bool
    image_token_id: int
    grid_pinpoints: tuple[tuple[int, int], ...] = ()   # NeXT: candidate (height, width)s

    @property
    def is_next(self) -> bool:
        return self.architecture == "LlavaNextForConditionalGeneration"

    @property
    def tokens_per_tile(self) -> int:
        n = self.vision.num_positions
        return n - 1 if self.select_strategy == "default" else n


def _int(cfg: dict, key: str, where: str) -> int:
    if key not in cfg:
        raise ConfigError(f"{where}: missing required key {key!r}")
    try:
        return int(cfg[key])
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}: expected an integer, got {cfg[key]!r}") from None


def vision_spec_from_config(vcfg: dict, where: str) -> VisionSpec:
    kind = VISION_KINDS.get(vcfg.get("model_type"))
    if kind is None:
        raise ConfigError(f"{where}: vision_config.model_type: {vcfg.get('model_type')!r} is not "
                          f"supported ({', '.join(VISION_KINDS)})")
    act = vcfg.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh")
    if act not in _ACTS:
        raise ConfigError(f"{where}: vision_config.hidden_act: {act!r} is not supported")
    spec = VisionSpec(
        kind=kind, hidden_size=_int(vcfg, "hidden_size", where),
        intermediate_size=_int(vcfg, "intermediate_size", where),
        num_layers=_int(vcfg, "num_hidden_layers", where),
        num_heads=_int(vcfg, "num_attention_heads", where),
        image_size=_int(vcfg, "image_size", where), patch_size=_int(vcfg, "patch_size", where),
        num_channels=int(vcfg.get("num_channels", 3)),
        layer_norm_eps=float(vcfg.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6)),
        hidden_act=act)
    if spec.image_size % spec.patch_size:
        raise ConfigError(f"{where}: vision_config.image_size {spec.image_size} is not a multiple "
                          f"of patch_size {spec.patch_size}")
    if spec.hidden_size % spec.num_heads:
        raise ConfigError(f"{where}: vision_config.hidden_size is not a multiple of "
                          "num_attention_heads")
    return spec


def text_config(cfg: dict, where: str) -> dict:
    """The language model's config as a text-LM config.json (with `architectures`)."""
    tcfg = cfg.get("text_config")
    if not isinstance(tcfg, dict):
        raise ConfigError(f"{where}: text_config: missing or not an object")
    out = dict(tcfg)
    if not out.get("architectures"):
        arch = _TEXT_ARCH_BY_TYPE.get(str(out.get("model_type")))
        if arch is None:
            raise ConfigError(f"{where}: text_config.model_type: {out.get('model_type')!r} is "
                              f"not supported ({', '.join(_TEXT_ARCH_BY_TYPE)})")
        out["architectures"] = [arch]
    return out


def _feature_layers(cfg: dict, num_layers: int, where: str) -> tuple[tuple[int, ...], bool]:
    raw = cfg.get("vision_feature_layer", -2)
    layers = raw if isinstance(raw, list) else [raw]
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ConfigError(f"{where}: vision_feature_layer: expected an int or a list of ints, "
                          f"got {raw!r}")
    out = []
    for x in layers:
        if not -(num_layers + 1) <= x <= num_layers:
            raise ConfigError(f"{where}: vision_feature_layer: {x} is outside the vision tower's "
                              f"{num_layers + 1} hidden states")
        out.append(x % (num_layers + 1))
    return tuple(out), isinstance(raw, list)


def vlm_spec_from_config(cfg: dict, where: str = "config.json") -> VlmSpec:
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in VLM_ARCHITECTURES:
        raise ConfigError(f"{where}: architectures: {arch!r} is not a supported vision-language "
                          f"model ({', '.join(VLM_ARCHITECTURES)})")
    vcfg = cfg.get("vision_config")
    if not isinstance(vcfg, dict):
        raise ConfigError(f"{where}: vision_config: missing or not an object")
    vision = vision_spec_from_config(vcfg, where)
    text = spec_from_config(text_config(cfg, where), where=f"{where} (text_config)")
    layers, is_list = _feature_layers(cfg, vision.num_layers, where)
    strategy = cfg.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise ConfigError(f"{where}: vision_feature_select_strategy: {strategy!r} is not "
                          "supported (default, full)")
    act = cfg.get("projector_hidden_act", "gelu")
    if act not in _ACTS:
        raise ConfigError(f"{where}: projector_hidden_act: {act!r} is not supported")
    token = cfg.get("image_token_id", cfg.get("image_token_index"))
    if not isinstance(token, int):
        raise ConfigError(f"{where}: image_token_id: missing or not an integer")
    pinpoints: tuple = ()
    if arch == "LlavaNextForConditionalGeneration":
        merge_type = cfg.get("multimodal_patch_merge_type", "spatial_unpad")
        if merge_type != "spatial_unpad":
            raise ConfigError(f"{where}: multimodal_patch_merge_type: {merge_type!r} is not "
                              "supported (spatial_unpad)")
        raw = cfg.get("image_grid_pinpoints")
        try:
            pinpoints = tuple((int(h), int(w)) for h, w in raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: image_grid_pinpoints: expected [[height, width], ...], "
                              f"got {raw!r}") from None
        if not pinpoints or any(h % vision.image_size or w % vision.image_size
                                for h, w in pinpoints):
            raise ConfigError(f"{where}: image_grid_pinpoints: every size must be a multiple of "
                              f"vision_config.image_size {vision.image_size}")
        if (strategy == "default") != (vision.kind == "clip"):
            raise ConfigError(f"{where}: vision_feature_select_strategy: {strategy!r} with a "
                              f"{vision.kind} tower leaves tiles that are not a grid of patches "
                              "(LLaVA-NeXT needs default with CLIP, full with SigLIP)")
    return VlmSpec(architecture=arch, vision=vision, text=text, feature_layers=layers,
                   feature_layer_is_list=is_list, select_strategy=strategy, projector_act=act,
                   projector_bias=bool(cfg.get("multimodal_projector_bias", True)),
                   image_token_id=token, grid_pinpoints=pinpoints)
