"""The `tests.common` that mergekit 0.1.5's test files import, which its sdist does not ship,
written here so that its tests drive `evomerge merge` (see test_mergekit_suite.py).

- `make_pico*` / `make_gpt2size`: tiny random checkpoints written by transformers' save_pretrained
  (the names are mergekit's; the sizes are ours, kept small: GPT-2 keeps its 12 layers because
  `test_gpt2_stack` counts them).
- `run_and_check_merge`: the config goes through `evomerge merge` (`cli.main`, in-process); then
  mergekit's own `run_merge` runs the same config, and the outputs must hold the same tensor names,
  shapes and dtypes, and, for deterministic methods, the same values up to `ULPS` roundings of the
  working dtype at the tensor's scale. A config `evomerge merge` refuses raises `ValueError` (as
  mergekit raises), unless mergekit accepts it, which fails the test.

Deliberate differences allowed for here (README.md, "mergekit's test suite"): mergekit 0.1.5 does
most methods' arithmetic in the working dtype (bfloat16 in these tests) where evomerge works in
float32 and rounds once, hence the tolerance; for the methods that keep elements by a threshold,
an element at the threshold may be kept by one and dropped by the other; and mergekit writes
arcee_fusion's and ramplus_tl's results in float32 whatever `dtype` says, where evomerge writes
the working dtype.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from evomerge_jax.cli import main
from evomerge_jax.merge.methods import get_method

VLM_SKIP = ("LLaVA (vision-language) checkpoints: `evomerge merge` merges their language tower and "
            "keeps the base's vision tower and projector, where mergekit 0.1.5 merges every tower "
            "(and, from save_pretrained's tensor names, writes no language model at all), so the "
            "outputs cannot agree; tests/test_vlm_export.py compares the language tower with "
            "mergekit's and with the float64 reference")
# How far apart two outputs may be: ULPS times the working dtype's epsilon times the tensor's
# largest magnitude. mergekit rounds every intermediate of most methods to the working dtype
# (bfloat16 in these tests), evomerge only the result: measured worst 2.8 (multislerp), most 1-2.
ULPS = 4
# Methods that keep or drop elements by a threshold on magnitudes or importances: rounding moves
# elements across it (bfloat16 magnitudes tie; float32 sums in another order differ in the last
# bit), so up to this fraction of a model's elements may differ beyond the tolerance (measured at
# bfloat16: ties 0.13%, sce 0.20%; at float32: arcee_fusion 0.006%).
SELECTING_METHODS = ("ties", "sce", "arcee_fusion")
SELECTED_DIFFER = 0.01
# Methods whose results mergekit 0.1.5 writes in float32 whatever `dtype` says.
FLOAT32_RESULT_METHODS = ("arcee_fusion", "ramplus_tl")


def _save(config, path) -> str:
    torch.manual_seed(zlib.crc32(Path(path).name.encode()))  # the same models in every run
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


# One matrix shape ([32, 32]) and one vector shape: evomerge's op-by-op merges compile once per
# shape, which is most of this suite's time.
_PICO = dict(hidden_size=32, intermediate_size=32, num_attention_heads=4, num_key_value_heads=4,
             num_hidden_layers=2)


def make_picollama(path, vocab_size: int = 32) -> str:
    return _save(transformers.LlamaConfig(
        vocab_size=vocab_size, **_PICO), path)


def make_gpt2size(path) -> str:
    return _save(transformers.GPT2Config(
        vocab_size=32, n_positions=32, n_embd=32, n_layer=12, n_head=4), path)


def make_picogranite(path) -> str:
    return _save(transformers.GraniteConfig(
        vocab_size=32, **_PICO), path)


def make_picoLlaVa(path) -> str:  # noqa: N802 (mergekit's name)
    pytest.skip(VLM_SKIP)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _run_mergekit(config, out: Path) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    run_merge(config, str(out), options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False,
                                                     write_model_card=False, quiet=True))


def compare_outputs(ours: Path, theirs: Path, method: str, working: str | None,
                    deterministic: bool) -> None:
    """Assert same names, shapes and dtypes, and when `deterministic` values within `ULPS` x eps
    x the tensor's largest magnitude (all of them, or all but `SELECTED_DIFFER` of the elements
    for `SELECTING_METHODS`)."""
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    elements, beyond = 0, []
    for name in a:
        x, y = a[name], b[name]
        float32_result = (method in FLOAT32_RESULT_METHODS and working is not None
                          and (x.dtype, y.dtype) == (getattr(torch, working), torch.float32))
        assert x.shape == y.shape and (x.dtype == y.dtype or float32_result), (
            f"{name}: ours {x.dtype} {list(x.shape)}, mergekit's {y.dtype} {list(y.shape)}")
        if not deterministic:
            continue
        eps = torch.finfo(getattr(torch, working) if working else x.dtype).eps
        x, y = x.double().numpy(), y.double().numpy()
        tolerance = ULPS * eps * max(float(np.abs(y).max()), 1e-30)
        count = int(np.sum(np.abs(x - y) > tolerance))
        elements += x.size
        if count:
            beyond.append((count, name, float(np.abs(x - y).max()), tolerance))
    allowed = SELECTED_DIFFER * elements if method in SELECTING_METHODS else 0
    total = sum(count for count, *_ in beyond)
    assert total <= allowed, (
        f"{total} of {elements} elements differ from mergekit's beyond the tolerance (allowed "
        f"{allowed:.0f}); worst: " + "; ".join(f"{name}: {count} elements, max {diff:.3g} > {tol:.3g}"
                                               for count, name, diff, tol in sorted(beyond)[-3:]))


def run_and_check_merge(config, check_nan: bool = True, check_tensors: bool = True,
                        validate=None, index_json_name=None, auto_arch: bool = False) -> None:
    text = yaml.safe_dump(config.model_dump(exclude_none=True, mode="json"), sort_keys=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yml").write_text(text)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(["merge", str(tmp / "config.yml"), str(tmp / "ours"), "--quiet"])
        if code != 0:
            line = stderr.getvalue().strip().splitlines()[-1]
            try:
                _run_mergekit(config, tmp / "theirs")
            except Exception:
                raise ValueError(line) from None  # both refuse it: as mergekit raises
            pytest.fail(f"evomerge merge refused a config mergekit accepts: {line}\n{text}")
        _run_mergekit(config, tmp / "theirs")
        deterministic = not get_method(config.merge_method).random
        compare_outputs(tmp / "ours", tmp / "theirs", config.merge_method, config.dtype,
                        deterministic and check_tensors)
        if check_nan:
            for name, tensor in _tensors(tmp / "ours").items():
                assert not tensor.isnan().any(), f"{name} has NaN"
        if validate is not None:
            validate(str(tmp / "ours"))
