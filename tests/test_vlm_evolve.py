"""EvoVLM (issue 15): evolving a tiny random LLaVA's language tower with a text LM, vision frozen.

Oracles: transformers' LlavaForConditionalGeneration loaded from each candidate's exported LLaVA
dir (its logits, NLL and greedy answers scored by rouge-score equal the population pass's on
batches mixing image and text rows), and for DFS the path folded as for a text model."""

import json

import numpy as np
import pytest
import torch
import transformers
import yaml
from rouge_score import rouge_scorer, tokenizers

from evolve_world import write_jsonl
from evomerge_jax.api import load
from evomerge_jax.checkpoint import save
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.evolve.metrics import images_of
from evomerge_jax.parallel.mesh import first_device_mesh
from evomerge_jax.parallel.seeds import candidate_keys
from evomerge_jax.searches.run import evolve, prepare
from evomerge_jax.searches.stage import evolve_stage
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


def _config(world, path, search="ps", baselines=False):
    tasks = [{"name": "vqa_nll", "type": "perplexity", "data": world["files"],
              "prompt": "USER: {q} ASSISTANT:", "target": " {a}", "batch_size": 6},
             {"name": "vqa", "type": "generate", "data": world["files"],
              "prompt": "USER: {q} ASSISTANT:", "target": "{a}", "batch_size": 6,
              "max_new_tokens": 3, "compare": "rouge_l", "rouge_tokenizer": "whitespace"}]
    cfg = {"search": search, "vision_model": str(world["vlm"]), "base_model": str(world["vlm"]),
           "models": [str(world["text"]), str(world["vlm"])],
           "merge": {"method": "task_arithmetic", "evolve": ["weight"]},
           # SimpleES: compiles in a fraction of CMA-ES's time (the strategy is not under test)
           "strategy": {"name": "SimpleES", "population_size": 4, "generations": 2, "seed": 0},
           "tasks": tasks, "output_dir": str(path.parent / "run"), "baselines": baselines,
           "compute": {"chunk_size": 1}}  # P = 1 programs only: one compile per search
    if search == "dfs":  # A = the VLM (its language tower), B = the text LM; teacher-forced
        cfg.pop("merge")  # task only (the generate path with images: the PS test)
        cfg.update(models=[str(world["vlm"]), str(world["text"])], dfs={"repeats": 2},
                   tasks=tasks[:1])
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _words(tokenizer, ids, eos):
    ids = list(ids)
    return tokenizer.decode(ids[:ids.index(eos)] if eos in ids else ids,
                            skip_special_tokens=True).strip()


def test_ps_run_and_its_pass_equal_transformers_on_the_exported_llava(vlm_world, tmp_path):
    """A short PS run on image questions (perplexity + generate with ROUGE-L; the VLM dir itself
    is the base and a source: its language tower) logs every generation and exports its best as
    a LLaVA dir. Then for two candidates (the best, a random one), on batches mixing image and
    text rows: the pass's logits equal transformers' LLaVA loaded from the candidate's exported
    dir, the pass's NLL score equals that model's, and its ROUGE-L equals that model's greedy
    answers scored by rouge-score."""
    import jax

    cfg = load_config(_config(vlm_world, tmp_path / "cfg.yml"))
    prepared = prepare(cfg)
    results = evolve_stage(cfg, lambda *_: prepared, **QUIET)
    _check_run(tmp_path / "run", results)
    search, tasks, tokenizer, _ = prepared  # its weights loaded by the run
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    genomes = np.stack([np.asarray(best["genome"], np.float32),
                        np.random.default_rng(5).uniform(0.1, 0.9, search.num_dims)]).astype(
        np.float32)
    keys = np.stack([np.asarray(best["key"], np.uint32), candidate_keys(0, 9, [0])[0]])
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, vision=search.vision,
                          chunk_size=1)
    rows = [np.arange(6)] * 2
    host, device = evaluator._assemble("fitness", rows)
    teacher, prompts = device["teacher"], device["generate"][0]
    assert teacher["image_mask"].any() and not teacher["image_mask"].all(axis=1).any()
    model = search.model

    @jax.jit
    def logits(weights, genomes, keys, batch):
        cand = model.candidates(genomes, keys)
        h = model.hidden(weights, cand, batch["tokens"], batch["mask"], **images_of(batch))
        return model.head_map(weights, cand, h, lambda x: x)

    got = np.asarray(logits(search.weights, genomes, keys, teacher))
    pixels = torch.tensor(host[0]["pixel_values"][host[0]["has_image"]])
    eos = tokenizer.eos_token_id
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Whitespace())
    answers = tasks[1].splits["fitness"].answers
    for c in range(2):
        out = tmp_path / "run" / "best" if c == 0 else search.export(
            genomes[c], keys[c], tmp_path / f"cand{c}")
        llava = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
        with torch.no_grad():
            want = llava(input_ids=torch.tensor(teacher["tokens"], dtype=torch.long),
                         attention_mask=torch.tensor(teacher["mask"], dtype=torch.long),
                         pixel_values=pixels).logits.numpy()
            new = llava.generate(input_ids=torch.tensor(prompts["tokens"], dtype=torch.long),
                                 attention_mask=torch.tensor(prompts["mask"], dtype=torch.long),
                                 pixel_values=pixels, max_new_tokens=3, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos)
        valid = teacher["mask"].astype(bool)
        np.testing.assert_allclose(got[c][valid], want[valid], atol=1e-4, rtol=1e-4)
        score = evaluator.fitness_scores(genomes[c:c + 1], keys[c:c + 1], rows)
        logp = torch.log_softmax(torch.tensor(want), -1).numpy()
        token = np.take_along_axis(logp, teacher["labels"][..., None], -1)[..., 0]
        nll = -token[teacher["scored"]].sum() / teacher["scored"].sum()
        assert score["vqa_nll"]["score"][0] == pytest.approx(-nll, rel=1e-4)
        width = prompts["tokens"].shape[1]
        rouge = [scorer.score(answers[i], _words(tokenizer, new[i, width:].tolist(), eos))[
            "rougeL"].fmeasure for i in range(6)]
        assert score["vqa"]["rouge_l"][0] == pytest.approx(100 * np.mean(rouge), abs=1e-9)


def _check_run(run, results):
    """Every generation logged with finite fitness; the best exported as a LLaVA dir whose
    vision tower and projector are the VLM's."""
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == [0, 1]
    assert all(np.isfinite(x["fitness"]["best"]) for x in lines)
    assert set(lines[0]["tasks"]) == set(results["scores"]["evolved"]["test"])
    assert json.loads((run / "best" / "config.json").read_text())["architectures"] == [
        "LlavaForConditionalGeneration"]


class _Whitespace(tokenizers.Tokenizer):
    def tokenize(self, text):
        return text.split()


def test_dfs_run_exports_the_folded_path_in_a_llava_dir(vlm_world, tmp_path):
    """A short DFS run (A: the VLM's language tower, B: the text LM) on image questions logs and
    exports a LLaVA dir: the VLM's vision tower and projector, and as language tower the best
    path folded as for a text model (scales in the weights)."""
    from evomerge_jax.dfs.export import fold_path
    from evomerge_jax.dfs.path import decode_path
    from evomerge_jax.dfs.search import dfs_search_for

    path = _config(vlm_world, tmp_path / "cfg.yml", "dfs", baselines=True)
    results = evolve(path, **QUIET)
    run = tmp_path / "run"
    _check_run(run, results)
    # the baseline of source A (the VLM dir: its language tower behind its vision side) equals
    # transformers' LLaVA of that dir on the test split
    _, tasks, _, _ = prepare(load_config(path))
    test = tasks[0].splits["test"].arrays
    llava = transformers.LlavaForConditionalGeneration.from_pretrained(vlm_world["vlm"]).eval()
    with torch.no_grad():
        logits = llava(input_ids=torch.tensor(test["tokens"], dtype=torch.long),
                       attention_mask=torch.tensor(test["mask"], dtype=torch.long),
                       pixel_values=torch.tensor(test["pixel_values"][test["has_image"]])).logits
    logp = torch.log_softmax(logits, -1).numpy()
    token = np.take_along_axis(logp, test["labels"][..., None], -1)[..., 0]
    nll = -token[test["scored"]].sum() / test["scored"].sum()
    assert results["scores"]["source vlm"]["test"]["vqa_nll"]["score"] == pytest.approx(
        -nll, rel=1e-4)
    best, vlm = load(run / "best"), load(vlm_world["vlm"])
    for part in ("vision", "projector"):
        for a, b in zip(jax_leaves(best.params[part]), jax_leaves(vlm.params[part])):
            np.testing.assert_array_equal(a, b)
    dfs = dfs_search_for(load_config(run / "config.yml"))
    genome = np.asarray(json.loads((run / "best.json").read_text())["genome"], np.float32)
    folded = fold_path(dfs._read_stack(first_device_mesh()), decode_path(dfs.path_spec, genome))
    assert best.spec.text == folded.spec
    for a, b in zip(jax_leaves(best.params["language"]), jax_leaves(folded.params)):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
