"""The demo zoo: tokenizer, deterministic cached build, HF loading, and the gates' metric.

A micro recipe (two layers of width 32, a few dozen steps) keeps the build to seconds; the demo's
recipe differs only in sizes and step counts.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers
from micro_zoo import MICRO  # noqa: E402

import evomerge_jax as ej
from evomerge_jax.zoo import build, data, probe, world


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return build.build_zoo(root / "a", recipe=MICRO, log=lambda _: None)


def test_tokenizer_round_trips_world_sentences(zoo):
    tok = transformers.AutoTokenizer.from_pretrained(zoo.base)
    heldout = data.make_heldout()
    for task in data.TASKS:
        for item in heldout.tasks[task]["test"][:5]:
            text = f"{item.prompt} {item.target}"
            ids = tok(text)["input_ids"]
            assert ids == [data.BOS] + [data.TOKEN_ID[t] for t in text.split()]
            assert tok.decode(ids, skip_special_tokens=False) == "<bos> " + text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (data.BOS, data.EOS, data.PAD)
    assert len(tok) == len(world.VOCAB)


def test_build_is_deterministic_and_cached(zoo, tmp_path):
    again = build.build_zoo(zoo.root, recipe=MICRO, log=lambda _: None)
    assert again.cached and again.gates == zoo.gates
    other = build.build_zoo(tmp_path / "b", recipe=MICRO, log=lambda _: None)
    assert not other.cached
    for name in ["base", *zoo.sources]:
        a = (zoo.root / "models" / name / "model.safetensors").read_bytes()
        b = (other.root / "models" / name / "model.safetensors").read_bytes()
        assert a == b, name
    changed = dataclasses.replace(MICRO, seed=4)
    assert changed.digest() != MICRO.digest()


def test_task_files(zoo):
    for task in data.TASKS:
        for split in data.SPLITS:
            lines = (zoo.tasks / task / f"{split}.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            assert len(records) == data.SPLIT_SIZES[task.split("_")[1]][split]
            assert all(set(r) == {"prompt", "target"} for r in records)
    l2 = [json.loads(x) for x in (zoo.tasks / "l2_math" / "test.jsonl").read_text().splitlines()]
    l1_words = set(world.L1_WORDS)
    assert not any(t in l1_words for r in l2 for t in (r["prompt"] + " " + r["target"]).split())
    fit = {r["prompt"] for r in map(json.loads, (zoo.tasks / "l2_math" / "fitness.jsonl").open())}
    assert not fit & {r["prompt"] for r in l2}


def test_saved_models_match_transformers(zoo):
    tokens = np.array([[1, 4, 20, 30, 40, 50, 18, 5], [1, 4, 110, 120, 130, 17, 5, 0]])
    mask = (tokens != 0).astype(np.int64)
    for path in [zoo.base, *zoo.sources.values(), zoo.reference]:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        assert model.config.architectures == ["LlamaForCausalLM"]
        with torch.no_grad():
            ref = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
        ours = np.asarray(ej.logits(ej.load(path), tokens, mask))
        np.testing.assert_allclose(ours[mask > 0], ref.numpy()[mask > 0], atol=1e-4)


def test_exact_match_equals_greedy_decoding(zoo):
    """The teacher-forced metric against real decoding with a KV cache. The prompts stop inside
    an answer, so that even the micro model ends some of them: targets are its own greedy output
    up to the end token (exact), a prefix of it and a corrupted copy (not exact)."""
    ckpt = ej.load(zoo.sources["math_a"])
    items, expected = [], []
    for item in data.make_heldout().tasks["l1_math"]["test"][:6]:
        prompt_words = (item.prompt + " " + item.target).split()[:-2]
        prompt = [data.BOS] + [data.TOKEN_ID[t] for t in prompt_words]
        out = ej.generate(ckpt, np.array([prompt]), 8, eos_token_id=data.EOS)[0, len(prompt):]
        words = [world.VOCAB[i] for i in out]
        end = words.index("<eos>") if "<eos>" in words else len(words)
        # generate pads after the end token, so only words before it are the model's own
        for target in (words[:end], words[:min(end, 1)], ["tom"] + words[1:end]):
            if target and "<pad>" not in target:
                items.append(data.Item(" ".join(prompt_words), " ".join(target)))
                n = len(target)
                expected.append(words[:n] == target and n == end < len(words))
    got = probe.item_correct(ckpt.params, ckpt.spec, items)
    assert got.tolist() == expected
    assert any(expected) and not all(expected)
