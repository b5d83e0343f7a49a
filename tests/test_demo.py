"""`evomerge demo --quick`: end to end, as a user runs it: the installed `evomerge` command, from a
fresh working directory, with the default `--out` (runs/demo, relative)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOURCES = ["base", "l2_chat", "math_a", "math_b"]


@pytest.mark.demo
def test_demo_quick_end_to_end(tmp_path):
    evomerge = Path(sys.executable).with_name("evomerge")  # the console script pip installed
    proc = subprocess.run([str(evomerge), "demo", "--quick"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "demo"
    for name in ("results.json", "results.md", "results.png", "best/config.json"):
        assert (out / name).is_file(), name
    # the generated configs hold absolute paths: a copy elsewhere still loads
    from evomerge_jax.evolve.config import load_config

    moved = tmp_path / "elsewhere" / "ps.yml"
    moved.parent.mkdir()
    moved.write_text((out / "configs" / "ps.yml").read_text())
    cfg = load_config(moved)
    assert cfg.base_model == out / "zoo" / "models" / "base" and cfg.base_model.is_dir()
    assert cfg.output_dir == out / "ps"
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
    assert [r["kind"] for r in results["rows"]][-3:] == ["ps", "dfs", "ps+dfs"]

    # the Pareto front of the PS genome: the run's own pareto.json in percent, no point beaten on
    # validation by another, both ends of the front its extremes, and its plot copied
    raw = json.loads((out / "pareto" / "pareto.json").read_text())
    assert raw["objectives"] == ["l2_math", "l2_general"]
    front = results["pareto"]
    assert front and len(front) == len(raw["points"])
    for p, q in zip(front, raw["points"]):
        assert p["point"] == q["point"]
        for split in ("validation", "test"):
            assert p[split] == {t: round(100 * v, 1) for t, v in q[split].items()}
    vals = [(q["validation"]["l2_math"], q["validation"]["l2_general"]) for q in raw["points"]]
    for a in vals:
        assert not any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in vals), (a, vals)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pareto front" in (out / "results.md").read_text()

    # the exported best loads in transformers and the printed answer came from it
    import torch
    import transformers

    best = Path(results["best_model"])
    assert best == out / "best"
    tok = transformers.AutoTokenizer.from_pretrained(best)
    model = transformers.AutoModelForCausalLM.from_pretrained(best, dtype=torch.float32)
    assert model.config.architectures == ["LlamaForCausalLM"] and tok.eos_token_id == 2
    assert results["sample"]["answer"] in text
    chosen = next(r for r in results["rows"] if r["name"] == results["sample"]["model"])
    assert (chosen["layers"], chosen["parameters"]) == (
        model.config.num_hidden_layers, sum(p.numel() for p in model.parameters()))

    # the merged rows' scores equal a re-evaluation of their exported dirs
    from evomerge_jax.searches.run import eval_model

    merged = [r for r in results["rows"] if r["kind"] in ("ps", "dfs", "ps+dfs")]
    assert any(r["kind"] == "ps" for r in merged)
    for r in merged:
        scores = eval_model(r["path"], results["configs"]["eval"], splits=("test",),
                            log=lambda _: None)["test"]
        assert r["l2_math"] == round(100 * scores["l2_math"]["acc"], 1)
        assert r["l2_general"] == round(100 * scores["l2_general"]["acc"], 1)
