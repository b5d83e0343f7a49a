"""The vision world of `evomerge demo --vlm`: small Pillow-drawn pictures of a few objects of one
shape and one colour on a gray ground, and questions about them in the zoo's two languages.

A picture is 32 x 32 pixels, a 4 x 4 grid of 8-pixel cells (one cell per patch of the tiny vision
tower); 1 to 4 cells hold an object. The object's shape is named by one of the world's object
words (coins: filled discs, cards: filled squares, rings: outlined circles), its colour by one of
the world's colour words. Two questions, in the zoo's instruction format, with the image token
(the processor's placeholder, `IMAGE_TOKEN`) after `<q>`:

  count   "<q> <unk> how many coins ? <a>"        -> "3 coins ."
  colour  "<q> <unk> what color is the coins ? <a>" -> "the coins is red ."

rendered word for word in L1 or L2 (world.translate). The splits (fitness, validation, test)
draw their pictures from disjoint (shape, colour, count, cell layout) keys, and training draws
outside all of them, so every evaluated picture is new to every model.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from . import world as w

IMAGE_TOKEN = "<unk>"  # the zoo vocabulary's never-trained token stands for the image
SIZE, GRID = 32, 4
CELL = SIZE // GRID
SHAPES = ("coins", "cards", "rings")
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 50),
          "yellow": (235, 220, 40), "white": (250, 250, 250), "black": (10, 10, 10)}
BACKGROUND = (128, 128, 128)
MAX_COUNT = 4
QUESTIONS = ("count", "colour")
SPLIT_SIZES = {"fitness": 48, "validation": 48, "test": 96}
WORLD_SEED = w.WORLD_SEED + 100


@dataclass(frozen=True)
class Picture:
    shape: str
    color: str
    cells: tuple[int, ...]  # occupied grid cells, row-major

    @property
    def key(self) -> tuple:
        return (self.shape, self.color, self.cells)


def draw_picture(rng: random.Random) -> Picture:
    count = rng.randint(1, MAX_COUNT)
    return Picture(rng.choice(SHAPES), rng.choice(tuple(COLORS)),
                   tuple(sorted(rng.sample(range(GRID * GRID), count))))


def render(p: Picture) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    fill = COLORS[p.color]
    for cell in p.cells:
        x, y = (cell % GRID) * CELL, (cell // GRID) * CELL
        box = (x + 1, y + 1, x + CELL - 2, y + CELL - 2)
        if p.shape == "coins":
            pen.ellipse(box, fill=fill)
        elif p.shape == "cards":
            pen.rectangle(box, fill=fill)
        else:
            pen.ellipse(box, outline=fill, width=2)
    return image


def question_answer(p: Picture, kind: str) -> tuple[list[str], list[str]]:
    """(question words, answer words) in L1."""
    if kind == "count":
        return ["how", "many", p.shape, "?"], [*w.number(len(p.cells)), p.shape, "."]
    return ["what", "color", "is", "the", p.shape, "?"], ["the", p.shape, "is", p.color, "."]


def item(p: Picture, kind: str, lang: str) -> tuple[str, str]:
    """(prompt, target) word strings in `lang`; the prompt holds the image token once."""
    q, a = question_answer(p, kind)
    return (" ".join(["<q>", IMAGE_TOKEN, *w.translate(q, lang), "<a>"]),
            " ".join(w.translate(a, lang)))


def heldout_pictures(world_seed: int = WORLD_SEED) -> dict[str, list[Picture]]:
    """split -> pictures, distinct keys across all splits (fixed by the world)."""
    rng, seen, out = random.Random(world_seed), set(), {}
    for split, n in SPLIT_SIZES.items():
        out[split] = []
        while len(out[split]) < n:
            p = draw_picture(rng)
            if p.key not in seen:
                seen.add(p.key)
                out[split].append(p)
    return out


def training_pictures(n: int, seed: int, heldout: dict[str, list[Picture]]) -> list[Picture]:
    exclude = {p.key for ps in heldout.values() for p in ps}
    rng, out = random.Random(seed), []
    while len(out) < n:
        p = draw_picture(rng)
        if p.key not in exclude:
            out.append(p)
    return out


def export_tasks(heldout: dict[str, list[Picture]], root: Path) -> dict[str, Path]:
    """root/images/<split>_<i>.png and root/<lang>_vqa/<split>.jsonl: one record per picture and
    question, {"prompt", "target", "image"} (the image path relative to the JSONL file)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, pictures in heldout.items():
        names = []
        for i, p in enumerate(pictures):
            name = f"{split}_{i:03d}.png"
            render(p).save(root / "images" / name)
            names.append(name)
        for lang in ("l1", "l2"):
            task = root / f"{lang}_vqa"
            task.mkdir(exist_ok=True)
            lines = []
            for i, (p, name) in enumerate(zip(pictures, names)):
                kind = QUESTIONS[i % len(QUESTIONS)]
                prompt, target = item(p, kind, lang)
                lines.append(json.dumps({"prompt": prompt, "target": target,
                                         "image": f"../images/{name}"}) + "\n")
            (task / f"{split}.jsonl").write_text("".join(lines))
            paths[f"{lang}_vqa/{split}"] = task / f"{split}.jsonl"
    return paths
