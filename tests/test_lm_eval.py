"""`evomerge eval --lm-eval` against lm-eval's own `hf` backend (the oracle) on a real model,
SmolLM2-135M-Instruct, and three local tasks (tests/lm_eval_tasks: multiple choice, greedy
generation with a regex filter, rolling log-likelihood): every metric lm-eval reports must agree.
"""

import json
import math
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="needs lm-eval (pip install lm-eval==0.4.13)")
from lm_eval.tasks import TaskManager  # noqa: E402

from evomerge_jax.cli import main  # noqa: E402
from lm_eval_data import write_tasks  # noqa: E402

TASKS = ["em_choice", "em_gen", "em_ppl"]
# acc, acc_norm and exact_match (and their stderrs, functions of them) must be equal. The
# perplexities are exp/ratios of summed float32 log-likelihoods, which differ from torch's by
# float32 rounding: measured relative difference 1.9e-5 on word_perplexity (91.4083 vs 91.4066),
# less on byte_perplexity and bits_per_byte; 1e-4 leaves margin and is far below a real error
# (one token scored wrongly moves word_perplexity of these 8 texts by over 1%).
PERPLEXITY_RTOL = 1e-4
PERPLEXITIES = ("word_perplexity", "byte_perplexity", "bits_per_byte")


@pytest.fixture(scope="module")
def include(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


def _local(include):
    """The include path's tasks alone: lm-eval's thousands of built-in task files take 16 s to
    index, and these tests use none of them."""
    return TaskManager(include_path=str(include), include_defaults=False)


def _hf(model_dir, include, tasks, **options):
    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
        batch_size=8, tasks=tasks, task_manager=_local(include),
        log_samples=False, **options)


def _assert_same_metrics(ours: dict, theirs: dict, tasks):
    for task in tasks:
        mine, ref = ours["results"][task], theirs["results"][task]
        assert set(mine) == set(ref), task
        for key, expected in ref.items():
            got = mine[key]
            if not isinstance(expected, (int, float)):
                assert got == expected, (task, key)
            elif key.split(",")[0] in PERPLEXITIES:
                assert math.isclose(got, expected, rel_tol=PERPLEXITY_RTOL), (task, key, got,
                                                                             expected)
            else:
                assert got == expected, (task, key, got, expected)
        assert ours["n-samples"][task] == theirs["n-samples"][task]


def test_cli_scores_equal_the_hf_backend(smollm2, include, tmp_path, capsys):
    out = tmp_path / "results" / "lm_eval.json"
    assert main(["eval", str(smollm2), "--lm-eval", ",".join(TASKS), "--include-path",
                 str(include), "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(f"|{task}" in table for task in TASKS) and "word_perplexity" in table
    ours = json.loads(out.read_text())
    assert not list(out.parent.glob(".*"))  # written atomically: no temp file left behind
    theirs = _hf(smollm2, include, TASKS)
    _assert_same_metrics(ours, theirs, TASKS)
    # the tasks discriminate: not all right, not all wrong
    assert 0 < ours["results"]["em_choice"]["acc,none"] < 1
    assert 0 < ours["results"]["em_gen"]["exact_match,first_word"] < 1


def test_chat_template_scores_equal_the_hf_backend(smollm2, include):
    from evomerge_jax.lm_eval import EvomergeLM

    model = EvomergeLM(str(smollm2), batch_size=8)
    assert model.chat_template(True) == model.tokenizer.chat_template
    assert model.apply_chat_template([{"role": "user", "content": "Hi"}]).endswith(
        "<|im_start|>assistant\n")
    options = dict(limit=5, apply_chat_template=True)
    ours = lm_eval.simple_evaluate(model=model, tasks=["em_gen"], log_samples=False,
                                   task_manager=_local(include), **options)
    theirs = _hf(smollm2, include, ["em_gen"], **options)
    _assert_same_metrics(ours, theirs, ["em_gen"])
    assert model.tokenizer_name == str(smollm2).replace("/", "__")  # lm-eval's cache key


def test_registered_with_lm_eval(smollm2):
    """lm-eval builds the model by name from a model_args string, as `simple_evaluate(model=
    "evomerge", model_args=...)` and `lm_eval --model evomerge` do."""
    from lm_eval.api.registry import get_model

    from evomerge_jax.errors import ConfigError
    from evomerge_jax.lm_eval import EvomergeLM
    assert get_model("evomerge") is EvomergeLM
    model = EvomergeLM.create_from_arg_string(f"pretrained={smollm2},max_length=512",
                                              {"batch_size": 4, "device": "cpu"})
    assert (model.batch_size, model.max_length, model.ckpt.spec.num_layers) == (4, 512, 30)
    with pytest.raises(ConfigError, match="unknown model_args batchsize"):
        EvomergeLM.create_from_arg_string(f"pretrained={smollm2},batchsize=4")


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_eval_flags_are_checked(capsys, tmp_path, include):
    model = str(tmp_path / "model")  # never read: every check comes first
    assert "exactly one of --config" in _error(capsys, ["eval", model])
    assert "exactly one of --config" in _error(
        capsys, ["eval", model, "--config", "c.yml", "--lm-eval", "em_gen"])
    assert "--limit only apply with --lm-eval" in _error(
        capsys, ["eval", model, "--config", "c.yml", "--limit", "3"])
    assert "--split applies to --config" in _error(
        capsys, ["eval", model, "--lm-eval", "em_gen", "--split", "test"])
    assert "no such directory" in _error(
        capsys, ["eval", model, "--lm-eval", "em_gen", "--include-path", str(tmp_path / "x")])
    assert "unknown lm-eval task(s): no_such_task" in _error(
        capsys, ["eval", model, "--lm-eval", "em_gen,no_such_task", "--include-path",
                 str(include)])


def test_missing_lm_eval_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails
    monkeypatch.delitem(sys.modules, "evomerge_jax.lm_eval", raising=False)
    err = _error(capsys, ["eval", str(tmp_path), "--lm-eval", "em_gen"])
    assert "lm-eval is not installed" in err and "evomerge-jax[lm-eval]" in err
