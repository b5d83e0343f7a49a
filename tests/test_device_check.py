"""benchmarks/device_check.py --tiny: the device check's whole script on CPU with a tiny model; its
JSON holds every section, the forward matches transformers and the Pallas merge its reference."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


def test_tiny_device_check_writes_every_field(tmp_path):
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "check.json"
    assert module.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tiny"] and report["ok"] and report["device"]["platform"] == "cpu"
    for dtype in ("float32", "bfloat16"):
        check = report["parity"][dtype]
        assert check["ok"] and check["argmax_agreement"] > 0.9
    assert report["parity"]["float32"]["max_abs_error_over_max_logit"] < 1e-4
    by_p = report["mfu"]["by_population"]
    assert set(by_p) == {"1", "2"}
    assert all(v["seconds"] > 0 and 0 < v["mfu_vs_measured_matmul"] for v in by_p.values())
    assert report["memory"]["plan_total_bytes"] > 0 and report["memory"]["population"] == 2
    generation = report["generation"]
    assert set(generation) == {*module.GENERATION_MODES, "modes_agree"}
    assert all(generation[m]["tokens_per_second"] > 0 for m in module.GENERATION_MODES)
    assert generation["modes_agree"] is True  # cached and remerge score alike
    kernels = report["kernels"]
    assert kernels["interpret"] and kernels["auto_backend"] == "jnp"
    for method in ("ties", "dare_ties"):
        assert kernels[method]["equal"] and kernels[method]["pallas_seconds"] > 0
    assert set(report["seconds"]) == {"parity", "matmul", "build", "mfu", "generation", "kernels"}
