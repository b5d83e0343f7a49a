"""Chat templates on evolve tasks (`chat_template: true`, `system_prompt`): every task type and
the lm-eval path render prompts through one function (evomerge_jax/chat.py); the token ids must be
transformers' own `apply_chat_template(..., tokenize=True)` on the SmolLM2 tokenizer."""

import json

import pytest

from evomerge_jax.errors import ConfigError
from evomerge_jax.evolve.config import TaskSection
from evomerge_jax.evolve.tasks import load_task, load_tokenizer

SYSTEM = "You answer in one word."
RECORDS = [{"q": "What is the capital of France?", "a": "Paris", "choices": ["Paris", "Rome"],
            "label": 0},
           {"q": "What do bees make?", "a": "honey", "choices": ["milk", "honey"], "label": 1}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return {s: path for s in ("fitness", "validation", "test")}


def _expected(tokenizer, question, system=SYSTEM):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                              return_dict=False))


def _rows(arrays, mask_key="mask"):
    return [list(t[m == 1]) for t, m in zip(arrays["tokens"], arrays[mask_key])]


@pytest.mark.parametrize("kind", ["generate", "exact_match", "choice"])
def test_task_prompts_are_transformers_chat_rendering(smollm2, data, kind):
    tokenizer = load_tokenizer(smollm2)
    extra = {"generate": {"target": "{a}", "compare": "string", "max_new_tokens": 4},
             "exact_match": {"target": " {a}"}, "choice": {}}[kind]
    cfg = TaskSection(name="qa", type=kind, data=data, prompt="{q}", chat_template=True,
                      system_prompt=SYSTEM, **extra)
    arrays = load_task(cfg, tokenizer, 8192).splits["test"].arrays
    for i, record in enumerate(RECORDS):
        want = _expected(tokenizer, record["q"])
        if kind == "generate":
            assert _rows(arrays)[i] == want
        else:  # teacher-forced rows start with the prompt; the scored part is the target
            row = arrays["tokens"][i] if kind == "exact_match" else arrays["tokens"][i, 0]
            scored = arrays["scored"][i] if kind == "exact_match" else arrays["scored"][i, 0]
            assert list(row[:len(want)]) == want and scored.argmax() == len(want) - 1
    plain = TaskSection(name="qa", type="generate", data=data, prompt="{q}", target="{a}",
                        compare="string")
    assert _rows(load_task(plain, tokenizer, 8192).splits["test"].arrays)[0] == list(
        tokenizer(RECORDS[0]["q"])["input_ids"])  # off by default


def test_lm_eval_task_prompts_use_the_same_rendering(smollm2, tmp_path):
    """The `lm_eval` task type with chat_template: lm-eval builds the chat (its system
    instruction, its turns) and calls our renderer; the ids equal transformers' rendering."""
    pytest.importorskip("lm_eval")
    from lm_eval_data import GEN, write_tasks

    from evomerge_jax.chat import chat_messages, render_chat
    from evomerge_jax.lm_eval_tokens import HFTokenization
    tokenizer = load_tokenizer(smollm2)
    include = write_tasks(tmp_path / "tasks")
    cfg = TaskSection(name="gen", type="lm_eval", chat_template=True, system_prompt=SYSTEM,
                      lm_eval={"task": "em_gen", "include_path": include})
    task = load_task(cfg, tokenizer, 8192)
    docs = task.splits["test"].answers
    for doc, ids in zip(docs, _rows(task.splits["test"].arrays)):
        question = GEN[doc.instances[0].doc_id][0]
        assert ids == _expected(tokenizer, f"Question: {question}\nAnswer:")
    messages = chat_messages("Hi", SYSTEM)
    assert HFTokenization(tokenizer, smollm2, 8192).apply_chat_template(messages) == render_chat(
        tokenizer, messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                add_generation_prompt=True)


def test_chat_template_errors(data, tmp_path):
    """A tokenizer without a chat template names the record; system_prompt needs the template."""
    from evomerge_jax.tokenizer_build import build_word_tokenizer
    tokenizer = load_tokenizer(build_word_tokenizer(["What", "is"], tmp_path))  # no template
    cfg = TaskSection(name="qa", type="generate", data=data, prompt="{q}", target="{a}",
                      compare="string", chat_template=True)
    with pytest.raises(ConfigError, match=r"qa.jsonl:1: the tokenizer .* has no chat template"):
        load_task(cfg, tokenizer, None)
    with pytest.raises(ValueError, match="system_prompt needs chat_template: true"):
        TaskSection(name="qa", type="generate", data=data, prompt="{q}", target="{a}",
                    system_prompt=SYSTEM)
