"""`evomerge demo --quick`: end to end through the CLI (quick zoo, tiny searches)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOURCES = ["base", "l2_chat", "math_a", "math_b"]


@pytest.mark.demo
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "evomerge_jax.cli", "demo", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for col in ("model", "kind", "l2_math", "l2_general", "layers", "parameters"):
        assert col in text
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert [r["kind"] for r in results["rows"]][:len(SOURCES)] == ["source"] * len(SOURCES)
    assert set(SOURCES) <= set(rows) and rows["bound (both)"]["kind"] == "bound"
    for r in results["rows"]:
        assert set(r) >= {"name", "kind", "l2_math", "l2_general", "layers", "parameters"}
        assert 0.0 <= r["l2_math"] <= 100.0 and 0.0 <= r["l2_general"] <= 100.0
        assert r["name"] in text
    assert results["wall_time_s"] > 0 and (out / "results.md").is_file()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # DFS rows either ran or say honestly that they are not available
    for kind in ("dfs", "ps+dfs"):
        assert any(r["kind"] == kind for r in results["rows"]) or any(
            n.startswith(kind + ":") for n in results["notes"])

    # the exported best loads in transformers and the printed answer came from it
    import torch
    import transformers

    best = Path(results["best_model"])
    tok = transformers.AutoTokenizer.from_pretrained(best)
    model = transformers.AutoModelForCausalLM.from_pretrained(best, dtype=torch.float32)
    assert model.config.architectures == ["LlamaForCausalLM"] and tok.eos_token_id == 2
    assert results["sample"]["answer"] in text

    # the merged rows' scores equal a re-evaluation of their exported dirs
    from evomerge_jax.evolve.run import eval_model

    merged = [r for r in results["rows"] if r["kind"] in ("ps", "dfs", "ps+dfs")]
    assert any(r["kind"] == "ps" for r in merged)
    for r in merged:
        scores = eval_model(r["path"], results["configs"]["eval"], splits=("test",),
                            log=lambda _: None)["test"]
        assert r["l2_math"] == round(100 * scores["l2_math"]["acc"], 1)
        assert r["l2_general"] == round(100 * scores["l2_general"]["acc"], 1)
