"""Task metrics against independent oracles: exact match by teacher forcing equals real greedy
decoding (KV-cache generation), choice and perplexity equal sums over transformers' log-softmax,
generate equals decoding transformers' greedy output and extracting the last number."""

import json

import numpy as np
import pytest
import torch

from evolve_world import WORDS, write_jsonl
from evomerge_jax.api import generate
from evomerge_jax.checkpoint import load
from evomerge_jax.evolve.config import TaskSection
from evomerge_jax.evolve.evaluate import Evaluator, PlainModel
from evomerge_jax.evolve.metrics import extract_answer
from evomerge_jax.evolve.tasks import load_task, load_tokenizer


def _prompts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[:16], size=int(rng.integers(2, 6)))) for _ in range(n)]


def _greedy(ckpt, tokenizer, prompts, new, eos=None):
    """Greedy continuations of every prompt (KV-cache decoding, one left-padded batch)."""
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, ids))
    tokens = np.array([[0] * (width - len(i)) + i for i in ids])
    mask = np.array([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    out = generate(ckpt, tokens, new, eos_token_id=eos, attention_mask=mask, pad_token_id=0)
    return [[int(t) for t in row[width:]] for row in out]


def _words(tokens):
    return [WORDS[t - 4] if 4 <= t < 4 + len(WORDS) else f"<extra_{t}>" for t in tokens]


def _task(tmp_path, name, records, **keys):
    files = {s: str(write_jsonl(tmp_path / f"{name}_{s}.jsonl", records))
             for s in ("fitness", "validation", "test")}
    return TaskSection(name=name, data=files, batch_size=8, **keys)


def _score(model_dir, task_cfgs, split="test"):
    tokenizer = load_tokenizer(model_dir)
    ckpt = load(model_dir)
    tasks = [load_task(t, tokenizer, 128) for t in task_cfgs]
    evaluator = Evaluator(PlainModel(ckpt.spec), ckpt.params, tasks, tokenizer)
    scores = evaluator.split_scores(np.zeros((1, 1), np.float32), np.zeros((1, 2), np.uint32), split)
    return scores, tokenizer, ckpt


@pytest.fixture(scope="module")
def eos_model(evolve_world, tmp_path_factory):
    """The base model with its EOS row of lm_head set to the row of a token it often predicts, so
    that its greedy decoding ends with EOS (and stops) on some prompts."""
    import shutil

    from safetensors.numpy import load_file, save_file

    path = tmp_path_factory.mktemp("eos") / "model"
    shutil.copytree(evolve_world["base"], path)
    tensors = load_file(path / "model.safetensors")
    head = tensors["lm_head.weight"]
    firsts = [g[0] for g in _greedy(load(path), load_tokenizer(path), _prompts(40, 0), 1)]
    common = max(set(firsts), key=firsts.count)
    head[2] = head[common] * 1.01
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_exact_match_by_teacher_forcing_equals_greedy_decoding(eos_model, tmp_path):
    """Targets: the model's whole greedy output up to EOS (a match), the same with a wrong last
    word, or cut one word short (no match: decoding goes on instead of emitting EOS)."""
    ckpt, tokenizer = load(eos_model), load_tokenizer(eos_model)
    prompts = _prompts(48, 3)
    greedy = _greedy(ckpt, tokenizer, prompts, 10, eos=2)
    records, expected = [], []
    for i, (prompt, out) in enumerate(zip(prompts, greedy)):
        words = _words(out[:out.index(2)] if 2 in out else out)
        if i % 3 == 1 and words:
            words[-1] = "w39" if words[-1] != "w39" else "w38"
        elif i % 3 == 2 and len(words) > 1:
            words = words[:-1]
        words = words or ["so"]
        target = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"] + [2]
        expected.append(out[:len(target)] == target)  # greedy output is the target, then EOS
        records.append({"prompt": prompt, "target": " ".join(words)})
    assert 3 <= sum(expected) <= len(expected) - 3  # both outcomes occur
    cfg = _task(tmp_path, "em", records, type="exact_match", prompt="{prompt}", target="{target}")
    scores, _, _ = _score(eos_model, [cfg])
    assert scores["em"]["acc"][0] == pytest.approx(np.mean(expected))


def test_choice_and_perplexity_equal_transformers_log_likelihoods(evolve_world, tmp_path):
    model = transformers_model(evolve_world["base"])
    prompts = _prompts(10, 4)
    rng = np.random.default_rng(5)
    records = [{"prompt": p, "choices": [" ".join(rng.choice(WORDS[:16], size=int(k)))
                                         for k in rng.integers(1, 4, size=3)],
                "label": int(rng.integers(0, 3)), "target": "w1 w2 3"} for p in prompts]
    choice = _task(tmp_path, "mc", records, type="choice", prompt="{prompt}")
    ppl = _task(tmp_path, "lm", records, type="perplexity", prompt="{prompt}", target="{target}")
    scores, tokenizer, _ = _score(evolve_world["base"], [choice, ppl])

    def loglik(prompt, cont):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].double(), -1)
        return sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c)), len(c)

    acc, acc_norm, nll, count = 0, 0, 0.0, 0
    for r in records:
        ll = [loglik(r["prompt"], c)[0] for c in r["choices"]]
        acc += int(np.argmax(ll)) == r["label"]
        acc_norm += int(np.argmax([x / len(c.encode()) for x, c in zip(ll, r["choices"])])) == r["label"]
        ll_t, n = loglik(r["prompt"], r["target"])
        nll, count = nll - ll_t, count + n
    assert scores["mc"]["acc"][0] == acc / len(records)
    assert scores["mc"]["acc_norm"][0] == acc_norm / len(records)
    assert scores["lm"]["nll"][0] == pytest.approx(nll / count, rel=1e-5)


def transformers_model(path):
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def _last_number(text):
    """The expected answer, found without the regex under test: the value of the last run of
    digits in the text, negative when a "-" touches it. As with the task's pattern
    `-?\\d+(?:\\.\\d+)?`, digits inside a word count ("w32" holds 32): a random model's
    completions are mostly such words, and these texts hold no decimal point."""
    value, i = None, 0
    while i < len(text):
        if not text[i].isdigit():
            i += 1
            continue
        j = i
        while j < len(text) and text[j].isdigit():
            j += 1
        value = float(text[i:j]) * (-1 if i and text[i - 1] == "-" else 1)
        i = j
    return value


def test_generate_extracts_the_last_number(evolve_world, tmp_path):
    """Free greedy generation (KV cache) with a stop string: the answer is the last number of the
    completion before the stop, compared numerically with the target's number."""
    model = transformers_model(evolve_world["base"])
    tokenizer = load_tokenizer(evolve_world["base"])
    records, expected = [], []
    for i, prompt in enumerate(_prompts(12, 6)):
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                 eos_token_id=2, pad_token_id=0)[0, len(ids):].tolist()
        text = tokenizer.decode(out, skip_special_tokens=True).split(" so ")[0]
        answer = _last_number(text)
        truth = answer if (answer is not None and i % 2 == 0) else 12345
        records.append({"prompt": prompt, "answer": f"it is {truth:g}"})
        expected.append(answer is not None and answer == truth)
    cfg = _task(tmp_path, "gen", records, type="generate", prompt="{prompt}",
                target="{answer}", max_new_tokens=6, stop=[" so "])
    scores, _, _ = _score(evolve_world["base"], [cfg])
    assert sum(expected) >= 2
    assert scores["gen"]["acc"][0] == pytest.approx(np.mean(expected))


def test_extract_answer():
    assert extract_answer("so 3 then 1,234.5 apples", r"-?\d[\d,]*(?:\.\d+)?", True) == 1234.5
    assert extract_answer("no digits", r"-?\d+", True) is None
    assert extract_answer("The answer is (B).", r"\(([A-D])\)", False) == "B"
    assert json.dumps(extract_answer("x -7", r"-?\d+", True)) == "-7.0"
    assert extract_answer("1 then 22 then 3 .", r"-?\d+", True) == 3.0  # the last match
    assert extract_answer("  no letter here  ", r"\(([A-D])\)", False) == "no letter here"
