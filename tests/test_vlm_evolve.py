"""EvoVLM (issue 15): evolving a tiny random LLaVA's language tower with a text LM, vision frozen.

Oracles: transformers' LlavaForConditionalGeneration on the exported LLaVA dir of each candidate
(its logits equal the population pass's on an image batch, and its NLL gives the in-pass score),
and for the runs, the exported best scored again from its dir."""

import json

import numpy as np
import pytest
import torch
import transformers
import yaml

from evolve_world import write_jsonl
from evomerge_jax.checkpoint import load, save
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.evaluate import Evaluator, combine
from evomerge_jax.evolve.metrics import images_of
from evomerge_jax.parallel.seeds import candidate_keys
from evomerge_jax.searches.run import evolve, prepare
from evomerge_jax.searches.stage import score_model
from vlm_models import build_vlm, random_image

QUIET = dict(progress=False, log=lambda *_: None)
QUESTIONS = ["What is in the image ?", "What colour is the shape ?", "Describe the image ?",
             "What shape is in the image ?"]
ANSWERS = ["a red circle", "blue", "two green square", "one blue circle", "three red"]


def _records(root, split: str, n: int, seed: int) -> list[dict]:
    """Image questions (every other row text-only, to mix rows in a batch)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        q, a = QUESTIONS[int(rng.integers(len(QUESTIONS)))], ANSWERS[int(rng.integers(5))]
        if i % 3 == 2:  # a text-only row
            records.append({"q": q, "a": a})
            continue
        name = f"images/{split}{i}.png"
        random_image(int(rng.integers(20, 40)), int(rng.integers(20, 40)), seed * 100 + i).save(
            root / name)
        records.append({"q": "<image> " + q, "a": a, "image": name})
    return records


@pytest.fixture(scope="module")
def vlm_world(tmp_path_factory):
    """A tiny LLaVA-1.5 (CLIP tower, llama language model), a text LM of its language
    architecture (its language tower moved by seeded noise) and image question files."""
    return make_vlm_world(tmp_path_factory.mktemp("vlm_evolve"))


def make_vlm_world(root):
    build_vlm(root / "vlm", kind="clip", seed=3)
    tower = load(root / "vlm").language
    rng = np.random.default_rng(4)
    params = {k: v for k, v in tower.params.items()}
    params["layers"] = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
                        for k, v in tower.params["layers"].items()}
    params["embed"] = tower.params["embed"] + 0.05 * rng.standard_normal(
        tower.params["embed"].shape).astype(np.float32)
    text = save(type(tower)(spec=tower.spec, params=params, config=tower.config),
                root / "text", tokenizer_from=root / "vlm")
    (root / "tasks" / "images").mkdir(parents=True)
    files = {s: str(write_jsonl(root / "tasks" / f"{s}.jsonl",
                                _records(root / "tasks", s, n, k)))
             for k, (s, n) in enumerate((("fitness", 6), ("validation", 6), ("test", 3)))}
    return {"root": root, "vlm": root / "vlm", "text": text, "files": files}


def _config(world, path, search="ps"):
    tasks = [{"name": "vqa_nll", "type": "perplexity", "data": world["files"],
              "prompt": "USER: {q} ASSISTANT:", "target": " {a}", "batch_size": 6},
             {"name": "vqa", "type": "generate", "data": world["files"],
              "prompt": "USER: {q} ASSISTANT:", "target": "{a}", "batch_size": 6,
              "max_new_tokens": 3, "compare": "rouge_l", "rouge_tokenizer": "whitespace"}]
    cfg = {"search": search, "vision_model": str(world["vlm"]), "base_model": str(world["vlm"]),
           "models": [str(world["text"]), str(world["vlm"])],
           "merge": {"method": "task_arithmetic", "evolve": ["weight"]},
           "strategy": {"population_size": 4, "generations": 2, "seed": 0},
           "tasks": tasks, "output_dir": str(path.parent / "run"), "baselines": False}
    if search == "dfs":  # A = the VLM (its language tower), B = the text LM
        cfg.pop("merge")
        cfg.update(models=[str(world["vlm"]), str(world["text"])], dfs={"repeats": 1})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _llava_logits(model_dir, batch, pixel_values):
    model = transformers.LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(batch["tokens"], dtype=torch.long),
                    attention_mask=torch.tensor(batch["mask"], dtype=torch.long),
                    pixel_values=torch.tensor(pixel_values))
    return out.logits.numpy()


def test_pass_logits_and_score_equal_the_exported_llava(vlm_world, tmp_path):
    """Two PS candidates (the VLM dir itself is the base and a source: its language tower): the
    pass's logits on a batch mixing image and text rows equal transformers' LLaVA built from
    each candidate's exported dir, and so does the in-pass score (NLL of the targets)."""
    import jax

    cfg = load_config(_config(vlm_world, tmp_path / "cfg.yml"))
    search, tasks, tokenizer, _ = prepare(cfg)
    search.load()
    evaluator = Evaluator(search.model, search.weights, tasks[:1], tokenizer,
                          vision=search.vision)
    rows = np.arange(6)
    host, device = evaluator._assemble("fitness", [rows])
    teacher = device["teacher"]
    assert teacher["image_mask"].any() and not teacher["image_mask"].all(axis=1).any()
    genomes = np.random.default_rng(5).uniform(0.1, 0.9, (2, search.num_dims)).astype(
        np.float32)
    keys = candidate_keys(0, 0, range(2))
    model = search.model

    @jax.jit
    def logits(weights, genomes, keys, batch):
        cand = model.candidates(genomes, keys)
        h = model.hidden(weights, cand, batch["tokens"], batch["mask"], **images_of(batch))
        return model.head_map(weights, cand, h, lambda x: x)

    got = np.asarray(logits(search.weights, genomes, keys, teacher))
    has = host[0]["has_image"]
    pixels = host[0]["pixel_values"][has]
    for c in range(2):
        out = search.export(genomes[c], keys[c], tmp_path / f"cand{c}")
        assert json.loads((out / "config.json").read_text())["architectures"] == [
            "LlavaForConditionalGeneration"]
        want = _llava_logits(out, teacher, pixels)
        valid = teacher["mask"].astype(bool)
        np.testing.assert_allclose(got[c][valid], want[valid], atol=1e-4, rtol=1e-4)
        # the in-pass score (-mean NLL of the targets) equals transformers' on the same rows
        score = evaluator.fitness_scores(genomes[c:c + 1], keys[c:c + 1], [rows])
        logp = torch.log_softmax(torch.tensor(want), -1).numpy()
        token = np.take_along_axis(logp, teacher["labels"][..., None], -1)[..., 0]
        nll = -token[teacher["scored"]].sum() / teacher["scored"].sum()
        assert score["vqa_nll"]["score"][0] == pytest.approx(-nll, rel=1e-4)


@pytest.mark.parametrize("search", ["ps", "dfs"])
def test_short_runs_log_and_export_a_llava_dir(vlm_world, tmp_path, search):
    """A short PS and DFS run on image questions (perplexity + generate with ROUGE-L) complete,
    log every generation, and export a LLaVA dir whose own score equals the run's."""
    path = _config(vlm_world, tmp_path / "cfg.yml", search)
    results = evolve(path, **QUIET)
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == [0, 1]
    assert all(np.isfinite(x["fitness"]["best"]) for x in lines)
    assert "rouge_l" in lines[0]["tasks"]["vqa"]
    best = run / "best"
    assert json.loads((best / "config.json").read_text())["architectures"] == [
        "LlavaForConditionalGeneration"]
    cfg = load_config(path)
    _, tasks, tokenizer, _ = prepare(cfg)
    from evomerge_jax.evolve.vision import vision_for

    again = score_model(best, tasks, tokenizer, ("validation",), vision=vision_for(cfg))
    inside = results["scores"]["evolved"]["validation"]
    for task in ("vqa_nll", "vqa"):
        assert again["validation"][task]["score"] == pytest.approx(inside[task]["score"],
                                                                   rel=1e-4, abs=1e-4)
    assert np.isclose(float(combine(tasks, {t: {"score": [again["validation"][t]["score"]]}
                                            for t in ("vqa_nll", "vqa")})[0]),
                      results["best"]["validation_score"], rtol=1e-4, atol=1e-4)
