"""Phi-3's fused tensors and Mixtral's experts over a mesh's model axis of 4 simulated CPU
devices: where each tensor lies (mesh.py) and the forward on split weights against one device.

Phi-3's `qkv_proj` rows are [q; k; v] and `gate_up_proj`'s [gate; up]: an even split of the rows
would give one device all of q and another k and v, so they stay replicated (arch.py gives them no
split; `o_proj` and `down_proj` split by heads and units as Llama's). Mixtral's experts split by
expert, the router stays whole. One subprocess (XLA_FLAGS must be set before JAX starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from family_models import make_family_model, save_family_model

_SCRIPT = """
import json, sys
import jax, numpy as np
import evomerge_jax as em
from evomerge_jax.parallel.mesh import make_mesh, weight_shardings
assert jax.device_count() == 4
out = {}
for path in sys.argv[1:]:
    ckpt = em.load(path)
    tokens = np.random.default_rng(0).integers(3, 97, size=(2, 12))
    one = np.asarray(em.logits(ckpt, tokens))
    for model in (4,):
        mesh = make_mesh(jax.devices()[:model], 1, model)
        params = jax.device_put(ckpt.params, weight_shardings(mesh, ckpt.spec, ckpt.params))
        split = em.Checkpoint(ckpt.spec, params, ckpt.config)
        logits = np.asarray(em.logits(split, tokens))
        out[f"{ckpt.spec.family}_{model}"] = {
            "diff": float(np.abs(logits - one).max()),
            "specs": {k: [str(a) for a in v.sharding.spec] for k, v in params["layers"].items()}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_mesh")
    dirs = [save_family_model(make_family_model(name, 60), root / name)
            for name in ("phi3_longrope", "mixtral_top2")]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *map(str, dirs)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_split_weights_give_one_devices_logits(mesh_results):
    for name, result in mesh_results.items():
        assert result["diff"] < 1e-5, name


def test_fused_tensors_replicated_experts_split(mesh_results):
    """[L, ...] stacks: 4 heads and 48 MLP units split 4 ways; 4 experts split by expert."""
    for model in (4,):
        phi, mix = mesh_results[f"phi3_{model}"]["specs"], mesh_results[f"mixtral_{model}"]["specs"]
        assert phi["qkv_proj"] == phi["gate_up_proj"] == []
        assert phi["o_proj"] == ["None", "None", "model"]
        assert phi["down_proj"] == ["None", "None", "model"]
        assert mix["experts_gate_up"] == mix["experts_down"] == ["None", "model"]
        assert mix["router"] == []
