"""lm-eval tasks as evolve fitness (task type `lm_eval`): a PS run on the tiny evolve world with a
multiple-choice task whose docs are split (fitness/validation/test) and a generate_until task
given as one lm-eval task per split; the run's reported test scores of its best must equal what
lm-eval's own `hf` backend reports for the exported dir on the same docs (the oracle)."""

import json

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="needs lm-eval (pip install lm-eval==0.4.13)")
from lm_eval.tasks import TaskManager  # noqa: E402

import evomerge_jax as em  # noqa: E402
from evolve_world import WORDS, continuation_records, write_config  # noqa: E402

CHOICE_YAML = """task: wc_choice
dataset_path: json
dataset_kwargs:
  data_files: {train: DATA/choice.jsonl}
test_split: train
output_type: multiple_choice
doc_to_text: "{{prompt}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
  - metric: acc_norm
metadata: {version: 1.0}
"""

GEN_YAML = """task: wc_gen_SPLIT
dataset_path: json
dataset_kwargs:
  data_files: {train: DATA/gen_SPLIT.jsonl}
test_split: train
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{target}}"
generation_kwargs: {until: ["so"], max_gen_toks: 3, do_sample: false}
filter_list:
  - name: first_word
    filter:
      - function: regex
        regex_pattern: "(\\\\S+)"
      - function: take_first
metric_list:
  - metric: exact_match
metadata: {version: 1.0}
"""

SPLITS = ("fitness", "validation", "test")


def _write_tasks(root, base_model):
    """Docs from the base model's greedy continuations (so that merges differ in score): choices
    are its 2-token continuation among 3 random ones; generation targets its first word."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(base_model)
    rng = np.random.default_rng(3)
    choice = []
    for record in continuation_records(model, 20, seed=41):
        wrong = [" ".join(rng.choice(WORDS[:16], 2)) for _ in range(3)]
        label = int(rng.integers(4))
        choices = wrong[:label] + [record["target"]] + wrong[label:]
        choice.append({"prompt": record["prompt"], "choices": choices, "label": label})
    (root / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choice))
    (root / "wc_choice.yaml").write_text(CHOICE_YAML.replace("DATA", str(root)))
    for i, split in enumerate(SPLITS):
        gen = [{"prompt": r["prompt"], "target": r["target"].split()[0]}
               for r in continuation_records(model, 8, seed=50 + i)]
        (root / f"gen_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
        (root / f"wc_gen_{split}.yaml").write_text(
            GEN_YAML.replace("DATA", str(root)).replace("SPLIT", split))
    return root


@pytest.fixture(scope="module")
def lm_eval_run(evolve_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_fitness")
    (root / "tasks").mkdir()
    include = _write_tasks(root / "tasks", evolve_world["base"])
    tasks = [{"name": "choice", "type": "lm_eval", "batch_size": 6,
              "lm_eval": {"task": "wc_choice", "include_path": "tasks", "split": [0.4, 0.3, 0.3],
                          "metric": "acc_norm"}},
             {"name": "gen", "type": "lm_eval", "batch_size": 4, "weight": 0.5,
              "lm_eval": {"include_path": "tasks",
                          "tasks": {s: f"wc_gen_{s}" for s in SPLITS}}}]
    cfg = write_config(root / "cfg.yml", evolve_world, tasks,
                       strategy={"population_size": 4, "generations": 1})
    return {"results": em.evolve(cfg, progress=False, log=lambda *_: None), "include": include,
            "cfg": cfg, "best": root / "run" / "best"}


def _hf(model_dir, include, tasks, samples=None):
    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
        batch_size=8, tasks=tasks, samples=samples, log_samples=False,
        task_manager=TaskManager(include_path=str(include), include_defaults=False))["results"]


def test_test_scores_equal_the_hf_backend_on_the_export(lm_eval_run):
    from evomerge_jax.evolve.tasks import load_task, load_tokenizer
    cfg = em.load_evolve_config(lm_eval_run["cfg"])
    choice = load_task(cfg.tasks[0], load_tokenizer(cfg.base_model), None)
    test_docs = [d.instances[0].doc_id for d in choice.splits["test"].answers]
    fit_docs = [d.instances[0].doc_id for d in choice.splits["fitness"].answers]
    assert len(test_docs) == 6 and not set(test_docs) & set(fit_docs)  # a split of 20 docs
    ours = lm_eval_run["results"]["scores"]["evolved"]["test"]
    theirs = _hf(lm_eval_run["best"], lm_eval_run["include"], ["wc_choice", "wc_gen_test"],
                 samples={"wc_choice": test_docs, "wc_gen_test": list(range(8))})
    for key in ("acc,none", "acc_norm,none"):
        assert ours["choice"][key] == theirs["wc_choice"][key], key
    assert ours["gen"]["exact_match,first_word"] == theirs["wc_gen_test"]["exact_match,first_word"]
    assert ours["choice"]["score"] == ours["choice"]["acc_norm,none"]
    # the scores discriminate: neither all right nor all wrong on both tasks
    assert 0 < ours["choice"]["acc,none"] < 1 or 0 < ours["gen"]["exact_match,first_word"] < 1


@pytest.mark.parametrize("section,message", [
    ({"task": "wc_choice", "metric": "f1"}, "lm_eval.metric 'f1' is not one of the task's metrics"),
    ({"task": "wc_choice", "split": [0.9, 0.1, 0.01]}, "three positive fractions"),
    ({"task": "wc_choice", "split": [0.97, 0.02, 0.01]}, "leaves the validation split empty"),
])
def test_bad_lm_eval_sections_are_one_line(lm_eval_run, evolve_world, cli_error, tmp_path,
                                           section, message):
    """(An unknown task name is looked up among lm-eval's built-in tasks too, whose index takes
    tens of seconds; `evomerge eval --lm-eval`'s test covers that message.)"""
    task = {"name": "t", "type": "lm_eval",
            "lm_eval": {"include_path": str(lm_eval_run["include"]), **section}}
    assert message in cli_error(write_config(tmp_path / "c.yml", evolve_world, [task]))
