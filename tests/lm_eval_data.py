"""Small local lm-eval tasks (tests/lm_eval_tasks/*.yaml) and their JSONL data, written to a
dir: one multiple-choice, one generate_until and one loglikelihood_rolling task."""

from __future__ import annotations

import json
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"

CHOICE = [
    ("What is the capital of France?", ["Berlin", "Paris", "Madrid", "Rome"], 1),
    ("How many legs does a spider have?", ["six", "four", "eight", "ten"], 2),
    ("Which planet is known as the Red Planet?", ["Mars", "Venus", "Jupiter", "Saturn"], 0),
    ("What do bees make?", ["milk", "silk", "honey", "wax paper"], 2),
    ("What is frozen water called?", ["steam", "ice", "fog", "sand"], 1),
    ("Which animal says moo?", ["a cat", "a dog", "a cow", "a duck"], 2),
    ("What color is the sky on a clear day?", ["green", "blue", "red", "black"], 1),
    ("How many days are in a week?", ["five", "seven", "ten", "twelve"], 1),
    ("What is the opposite of hot?", ["warm", "cold", "loud", "fast"], 1),
    ("Which is the largest ocean on Earth?", ["the Atlantic Ocean", "the Indian Ocean",
                                              "the Arctic Ocean", "the Pacific Ocean"], 3),
    ("What do you use to write on a blackboard?", ["chalk", "a spoon", "a hammer", "soap"], 0),
    ("Which season comes after winter?", ["autumn", "summer", "spring", "winter again"], 2),
]

GEN = [
    ("What is 2 plus 3?", "5"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the first letter of the English alphabet?", "A"),
    ("How many wheels does a bicycle have?", "2"),
    ("What is 10 minus 4?", "6"),
    ("What is the capital of Italy?", "Rome"),
    ("What color are bananas when they are ripe?", "yellow"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("How many hours are in a day?", "24"),
    ("What animal is known as man's best friend?", "dog"),
]

PPL = [
    "The quick brown fox jumps over the lazy dog. It was a sunny afternoon in the park.",
    "Water boils at one hundred degrees Celsius at sea level, and freezes at zero degrees.",
    "Once upon a time, a small village stood at the edge of a great forest, and its people "
    "told stories about the lights they saw between the trees at night.",
    "Python is a programming language that lets you work quickly and integrate systems "
    "more effectively.",
    "The library opens at nine in the morning and closes at six in the evening, except on "
    "Sundays, when it is closed all day.",
    "Photosynthesis converts light energy into chemical energy that plants store as sugar.",
    "She opened the letter slowly, read the first line twice, and then sat down by the window.",
    "Mountains, rivers and deserts shape where people live, how they travel and what they eat.",
]


def write_tasks(root: Path) -> Path:
    """The three task YAMLs with their DATA_DIR set to `root`, and the JSONL files; returns the
    include path."""
    root.mkdir(parents=True, exist_ok=True)
    rows = {
        "choice.jsonl": [{"question": q, "choices": c, "answer": a} for q, c, a in CHOICE],
        "gen.jsonl": [{"question": q, "answer": a} for q, a in GEN],
        "ppl.jsonl": [{"text": t} for t in PPL],
    }
    for name, records in rows.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    for yaml in TASKS_DIR.glob("*.yaml"):
        (root / yaml.name).write_text(yaml.read_text().replace("DATA_DIR", str(root)))
    return root
