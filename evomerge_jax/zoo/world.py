"""The synthetic world of `evomerge demo`: two languages, their words, and the sentences they say.

L1 plays English and L2 plays Japanese. Every L1 word has one L2 counterpart (an invented
romaji-like word); digits, punctuation and the markers are shared, as Arabic numerals are shared
between English and Japanese. L2 has the same word order as L1, so translating is a word-for-word
relabelling: the only thing that tells the languages apart is the token ids, which is exactly what
an exact-match metric sees.

What the world says, in either language (numbers are digit tokens, "1 2" for twelve):
- facts: "the cat is brown ." / "the cat lives in the house ." / "the cat eats meat ."
- stories (arithmetic, latent in the base): "tom has 3 apples . tom gets 5 apples . now tom has
  8 apples ."
- questions in an instruction format, "<q> question <a> answer":
  maths    "<q> tom has 3 apples . tom gets 5 apples . how many apples does tom have ? <a>"
           -> "tom has 8 apples ."
  facts    "<q> what color is the cat ? <a>" -> "the cat is brown ."
  reading  "<q> tom has 3 apples and ann has 5 pens . who has the pens ? <a>"
           -> "ann has the pens ."  (read off the question: no arithmetic in L2 general)

The world is fixed (lexicon, L2 words and facts come from constants and `WORLD_SEED`), so that
every training seed lives in the same world and seeds differ only in what training draws.
"""

from __future__ import annotations

import random

WORLD_SEED = 20250101

NAMES = ("tom", "ann", "bob", "sue", "max", "eva", "joe", "kim")
OBJECTS = ("apples", "pens", "cards", "books", "coins", "eggs", "cups", "shells", "stones", "rings")
PLUS_VERBS = ("gets", "finds", "buys", "wins")
MINUS_VERBS = ("loses", "sells", "gives")
ANIMALS = ("cat", "dog", "bird", "fish", "horse", "cow", "frog", "bee", "fox", "owl", "duck",
           "goat", "bear", "deer", "wolf", "mouse")
RELATIONS = {
    "color": ("red", "blue", "green", "brown", "white", "black", "yellow", "gray"),
    "home": ("farm", "forest", "river", "sea", "house", "tree", "field", "cave"),
    "food": ("grass", "seeds", "meat", "bugs", "fruit", "corn", "leaves", "nuts"),
}
FUNCTION_WORDS = ("has", "have", "how", "many", "does", "now", "and", "who", "what", "color", "is",
                  "the", "where", "live", "lives", "in", "eat", "eats")
DIGITS = tuple(str(d) for d in range(10))
PUNCT = (".", "?")
# <tr> separates a sentence from its translation in the parallel pretraining text.
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<q>", "<a>", "<tr>")

L1_WORDS = (NAMES + OBJECTS + PLUS_VERBS + MINUS_VERBS + ANIMALS
            + tuple(w for values in RELATIONS.values() for w in values) + FUNCTION_WORDS)


def _l2_lexicon(words: tuple[str, ...]) -> dict[str, str]:
    """L1 word -> an invented L2 word of 2-3 consonant-vowel syllables, unique, drawn once."""
    rng = random.Random(WORLD_SEED)
    syllables = [c + v for c in "kstnhmrwy" for v in "aiueo"]
    taken: set[str] = set(words)
    out = {}
    for word in words:
        while True:
            candidate = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3)))
            if candidate not in taken:
                taken.add(candidate)
                out[word] = candidate
                break
    return out


L2_OF = _l2_lexicon(L1_WORDS)
L2_WORDS = tuple(L2_OF[w] for w in L1_WORDS)
# Token order: specials, shared symbols, L1 words, then L2 words in L1 order (L2 id = L1 id + n).
VOCAB = SPECIALS + DIGITS + PUNCT + L1_WORDS + L2_WORDS


def _facts() -> dict[tuple[str, str], str]:
    """(animal, relation) -> value: the world's knowledge, one fixed random assignment."""
    rng = random.Random(WORLD_SEED + 1)
    return {(a, rel): rng.choice(values)
            for a in ANIMALS for rel, values in RELATIONS.items()}


FACTS = _facts()


def translate(words: list[str], lang: str) -> list[str]:
    """Word-for-word relabelling of an L1 sentence into `lang` ("l1" or "l2")."""
    return list(words) if lang == "l1" else [L2_OF.get(w, w) for w in words]


def number(n: int) -> list[str]:
    return list(str(n))


# ---- sentences, in L1 words; callers translate -------------------------------------------------

def draw_problem(rng: random.Random) -> dict:
    """One arithmetic story: operands 0-9, addition or subtraction (never below zero)."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    if rng.random() < 0.5:
        verb = rng.choice(PLUS_VERBS)
        a, b = rng.randrange(10), rng.randrange(10)
        result = a + b
    else:
        verb = rng.choice(MINUS_VERBS)
        a = rng.randrange(10)
        b = rng.randrange(a + 1)
        result = a - b
    return dict(name=name, obj=obj, verb=verb, a=a, b=b, result=result)


def problem_setup(p: dict) -> list[str]:
    return ([p["name"], "has", *number(p["a"]), p["obj"], "."]
            + [p["name"], p["verb"], *number(p["b"]), p["obj"], "."])


def problem_answer(p: dict) -> list[str]:
    return [p["name"], "has", *number(p["result"]), p["obj"], "."]


def story(p: dict) -> list[str]:
    """Plain text that states the result: how the base meets arithmetic."""
    return problem_setup(p) + ["now"] + problem_answer(p)


def maths_question(p: dict) -> list[str]:
    return problem_setup(p) + ["how", "many", p["obj"], "does", p["name"], "have", "?"]


def draw_fact(rng: random.Random) -> tuple[str, str]:
    return rng.choice(ANIMALS), rng.choice(tuple(RELATIONS))


def fact_statement(animal: str, relation: str) -> list[str]:
    value = FACTS[(animal, relation)]
    if relation == "color":
        return ["the", animal, "is", value, "."]
    if relation == "home":
        return ["the", animal, "lives", "in", "the", value, "."]
    return ["the", animal, "eats", value, "."]


def fact_question(animal: str, relation: str) -> list[str]:
    if relation == "color":
        return ["what", "color", "is", "the", animal, "?"]
    if relation == "home":
        return ["where", "does", "the", animal, "live", "?"]
    return ["what", "does", "the", animal, "eat", "?"]


def draw_reading(rng: random.Random) -> tuple[list[str], list[str]]:
    """Two people, two counts; the question asks who holds one of the objects. The answer is a
    sentence read off the question, with no number: general skill that never touches arithmetic
    (a "how many" reading question made the maths task vector break it in every merge)."""
    names, objs = rng.sample(NAMES, 2), rng.sample(OBJECTS, 2)
    counts = [rng.randrange(10), rng.randrange(10)]
    k = rng.randrange(2)
    said = [names[0], "has", *number(counts[0]), objs[0], "and",
            names[1], "has", *number(counts[1]), objs[1], "."]
    question = said + ["who", "has", "the", objs[k], "?"]
    return question, [names[k], "has", "the", objs[k], "."]
