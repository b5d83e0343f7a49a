"""The tiny LLaVA of `evomerge demo --vlm`: the zoo's base as language tower, a tiny CLIP vision
tower (random, frozen), and a two-layer projector, trained together with the language tower
(optax AdamW, the zoo's schedule) to answer the vision world's questions in L1.

1. A skeleton LLaVA-1.5 dir is written with transformers (CLIP tower seeded at random, the zoo
   tokenizer, a CLIP image processor, `<unk>` as the image token: the zoo vocabulary has no
   spare token, and sources must share the VLM's vocabulary).
2. The frozen tower's selected features of every training picture are computed once
   (vlm.vision), then projector + language model are trained on `<bos> <q> [image tokens]
   question <a> answer <eos>`, the projected features spliced into the token embeddings
   (vlm.features.place_features + model.splice_embeds), the loss on answer and end token.
3. The trained projector goes into the skeleton, the trained language tower is written over it
   by vlm.export (the project's LLaVA writer), processor files copied.

Cached under the zoo's folder by a digest of the recipe and this code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import random
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..checkpoint import load
from ..fileio import atomic_dir
from ..model import embed, hidden_states_from_embeds, splice_embeds, unembed
from . import data, train
from . import vision_world as vw


@dataclass(frozen=True)
class VisionRecipe:
    seed: int = 0
    pictures: int = 1000
    steps: int = 300
    lr: float = 1e-3      # the projector's peak learning rate
    lm_lr: float = 2e-4   # the language tower's: small, so its task vector stays small
    batch: int = 32
    seq_len: int = 32
    vision_hidden: int = 32
    vision_layers: int = 2
    patch: int = 8

    def digest(self, zoo_digest: str) -> str:
        code = "".join(inspect.getsource(m) for m in (vw, train)) + inspect.getsource(
            inspect.getmodule(VisionRecipe))
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + zoo_digest + code
        return hashlib.sha256(text.encode()).hexdigest()[:16]


QUICK = VisionRecipe(pictures=200, steps=40)


def _skeleton(base_dir: Path, out: Path, r: VisionRecipe) -> None:
    """A LLaVA dir (transformers) with the base's config as text config and a random CLIP."""
    import torch
    import transformers

    text = transformers.AutoConfig.from_pretrained(base_dir)
    vcfg = transformers.CLIPVisionConfig(
        hidden_size=r.vision_hidden, intermediate_size=2 * r.vision_hidden,
        num_hidden_layers=r.vision_layers, num_attention_heads=2, image_size=vw.SIZE,
        patch_size=r.patch, projection_dim=r.vision_hidden)
    cfg = transformers.LlavaConfig(vision_config=vcfg, text_config=text,
                                   image_token_id=data.TOKEN_ID[vw.IMAGE_TOKEN],
                                   vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(r.seed)
    transformers.LlavaForConditionalGeneration(cfg).eval().save_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    images = transformers.CLIPImageProcessor(size={"shortest_edge": vw.SIZE},
                                             crop_size={"height": vw.SIZE, "width": vw.SIZE})
    transformers.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=r.patch,
                                vision_feature_select_strategy="default",
                                image_token=vw.IMAGE_TOKEN,
                                num_additional_image_tokens=1).save_pretrained(out)


def _features(vlm_dir: Path, pictures) -> np.ndarray:
    """The frozen tower's selected features [N, T, Dv] (LLaVA's layer and CLS drop), by the dir's
    own processor and our vision tower."""
    from ..vlm import vision
    from ..vlm.checkpoint import frozen_params, open_vlm
    from ..vlm.processor import load_processor

    spec = open_vlm(vlm_dir)[2]
    params, _ = frozen_params(vlm_dir, np.float32)
    proc = load_processor(vlm_dir).image_processor
    layer = spec.feature_layers[0]
    out = []
    for i in range(0, len(pictures), 256):
        pixels = proc([vw.render(p) for p in pictures[i:i + 256]], return_tensors="np")
        hs = vision.hidden_states(params, spec.vision, jnp.asarray(pixels["pixel_values"]), layer)
        out.append(np.asarray(hs[layer][:, 1:]))
    return np.concatenate(out)


def _encode(pictures, seq_len: int, tokens_per_image: int, rng: random.Random):
    """L1 items, `<bos> <q> [image]*T question <a> answer <eos>`: tokens, answer mask."""
    items = []
    for p in pictures:
        prompt, target = vw.item(p, rng.choice(vw.QUESTIONS), "l1")
        expanded = prompt.replace(vw.IMAGE_TOKEN, " ".join([vw.IMAGE_TOKEN] * tokens_per_image))
        items.append(data.Item(expanded, target))
    return data.encode_items(items, seq_len)


def _loss(trainable, spec, vspec, image_id, features, tokens, mask):
    from ..vlm.features import place_features, project

    params = trainable["language"]
    feats = project(trainable["projector"], vspec, features).reshape(-1, spec.hidden_size)
    images, image_mask = place_features(feats, tokens[:, :-1], image_id)
    h = splice_embeds(embed(params, spec, tokens[:, :-1]), images, image_mask)
    logits = unembed(params, spec, hidden_states_from_embeds(params, spec, h,
                                                             tokens[:, :-1] != data.PAD))
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.sum(nll * mask[:, 1:]) / jnp.maximum(jnp.sum(mask[:, 1:]), 1.0)


_OPT = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b2=0.98,
                                                         weight_decay=0.0))


@partial(jax.jit, static_argnames=("spec", "vspec", "image_id"))
def _step(trainable, opt_state, features, tokens, mask, lr, lm_scale, spec, vspec, image_id):
    loss, grads = jax.value_and_grad(_loss)(trainable, spec, vspec, image_id, features, tokens,
                                            mask)
    opt_state[1].hyperparams["learning_rate"] = lr
    updates, opt_state = _OPT.update(grads, opt_state, trainable)
    updates["language"] = jax.tree.map(lambda u: u * lm_scale, updates["language"])
    return optax.apply_updates(trainable, updates), opt_state, loss


def _train(skeleton: Path, base_dir: Path, r: VisionRecipe, log):
    from ..vlm.checkpoint import frozen_params, open_vlm

    vspec = open_vlm(skeleton)[2]
    base = load(base_dir, "float32")
    pictures = vw.training_pictures(r.pictures, r.seed, vw.heldout_pictures())
    features = _features(skeleton, pictures)
    tokens, mask = _encode(pictures, r.seq_len, features.shape[1], random.Random(r.seed))
    trainable = {"language": base.params, "projector": frozen_params(skeleton, np.float32)[1]}
    lr = optax.warmup_cosine_decay_schedule(0.0, r.lr, 30, r.steps, r.lr * 0.1)
    opt_state = _OPT.init(trainable)
    order, rng, losses = np.empty(0, np.int64), np.random.default_rng(r.seed), []
    for step in range(r.steps):
        if len(order) < r.batch:
            order = np.concatenate([order, rng.permutation(len(tokens))])
        idx, order = order[:r.batch], order[r.batch:]
        trainable, opt_state, loss = _step(
            trainable, opt_state, jnp.asarray(features[idx]), jnp.asarray(tokens[idx]),
            jnp.asarray(mask[idx]), jnp.float32(lr(step)), jnp.float32(r.lm_lr / r.lr),
            base.spec, vspec,
            vspec.image_token_id)
        if step % 50 == 0 or step == r.steps - 1:
            losses.append(float(loss))
    log(f"  vlm: {r.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return base, trainable


def _write(skeleton: Path, base, trainable, out: Path) -> None:
    """The trained projector into the skeleton's tensors, then the language tower over it."""
    from safetensors.numpy import load_file, save_file

    from ..vlm.checkpoint import open_vlm
    from ..vlm.export import write_vlm_dir

    layout = open_vlm(skeleton)[1]
    names = {"w1": "linear_1.weight", "b1": "linear_1.bias", "w2": "linear_2.weight",
             "b2": "linear_2.bias"}
    shard = skeleton / "model.safetensors"
    tensors = load_file(str(shard))
    for key, hf in names.items():
        tensors[layout.projector + hf] = np.asarray(trainable["projector"][key], np.float32)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    write_vlm_dir(skeleton, trainable["language"], base.spec, out, overwrite=True)


def build_vlm(zoo, recipe: VisionRecipe, log=print) -> tuple[Path, Path]:
    """(the tiny LLaVA dir, the vision tasks' folder) under the zoo's root, built or cached."""
    root = Path(zoo.root) / "vision"
    digest = recipe.digest(json.loads((Path(zoo.root) / "recipe.json").read_text())["digest"])
    stamp = root / "recipe.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("digest") == digest:
        log(f"vlm: cached in {root} (recipe {digest})")
        return root / "llava", root / "tasks"
    start = time.time()
    log(f"vlm: building in {root} (recipe {digest})")
    with atomic_dir(root, overwrite=True) as tmp, tempfile.TemporaryDirectory() as scratch:
        skeleton = Path(scratch) / "skeleton"
        _skeleton(Path(zoo.base), skeleton, recipe)
        base, trainable = _train(skeleton, Path(zoo.base), recipe, log)
        _write(skeleton, base, trainable, tmp / "llava")
        vw.export_tasks(vw.heldout_pictures(), tmp / "tasks")
        (tmp / "recipe.json").write_text(json.dumps(
            {"digest": digest, "recipe": dataclasses.asdict(recipe),
             "seconds": round(time.time() - start, 1)}, indent=2) + "\n")
    return root / "llava", root / "tasks"
