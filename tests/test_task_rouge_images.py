"""Tasks with images and `compare: rouge_l`: ROUGE-L equals rouge-score's own scorer (a Japanese
pair by characters also equals the LCS formula by hand), and a record's `image` fails with one
line naming its file and line when missing, unreadable or given to a model without vision. (A
generate task's ROUGE-L through the pass against transformers' greedy answers:
test_vlm_evolve.py.)"""

import pytest
from rouge_score import rouge_scorer, tokenizers

from evolve_world import WORDS, write_jsonl
from evomerge_jax.errors import ConfigError
from evomerge_jax.evolve.config import TaskSection
from evomerge_jax.evolve.rouge import rouge_l
from evomerge_jax.evolve.tasks import load_task, load_tokenizer
from evomerge_jax.evolve.task_types import TaskError
from evomerge_jax.tokenizer_build import build_word_tokenizer


class _CharTokenizer(tokenizers.Tokenizer):  # the oracle's own, written apart from rouge.py
    def tokenize(self, text):
        return list(text.replace(" ", ""))


PAIRS = [("the cat sat on the mat", "the cat is on the mat"),
         ("The Cat sat", "the cat sat down"), ("nothing alike", "zz yy"), ("", "a b")]
JA = [("猫が座った", "猫が椅子に座った"), ("青い四角が二つ", "赤い丸が二つあります"),
      ("犬", "犬")]


def test_rouge_l_equals_rouge_score():
    default = rouge_scorer.RougeScorer(["rougeL"])
    for pred, ref in PAIRS:
        want = default.score(ref, pred)["rougeL"].fmeasure
        assert rouge_l(pred, ref) == pytest.approx(want, abs=1e-12)
    chars = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer())
    for pred, ref in JA + PAIRS:
        want = chars.score(ref, pred)["rougeL"].fmeasure
        assert rouge_l(pred, ref, "chars") == pytest.approx(want, abs=1e-12)
    # rouge-score's default tokenizer drops every Japanese character: no score at all
    assert rouge_l(*JA[0]) == 0.0
    # by hand: LCS("猫が座った", "猫が椅子に座った") = 5 of 5 and 8 characters
    p, r = 5 / 5, 5 / 8
    assert rouge_l(*JA[0], "chars") == pytest.approx(2 * p * r / (p + r), abs=1e-12)
    # whitespace: case kept (the default lowercases)
    assert rouge_l("The Cat sat", "the cat sat", "whitespace") == pytest.approx(1 / 3)
    assert rouge_l("a-b c", "a b c", "tests.test_task_rouge_images:_split_dash") == 1.0


def _split_dash(text):
    return text.replace("-", " ").split()


def test_rouge_config_errors(tmp_path):
    base = dict(name="g", type="generate", data={s: "x.jsonl" for s in
                                                 ("fitness", "validation", "test")},
                prompt="{q}", target="{a}")
    with pytest.raises(ValueError, match="rouge_tokenizer applies to compare: rouge_l"):
        TaskSection(**base, rouge_tokenizer="chars")
    with pytest.raises(ValueError, match="cannot be imported"):
        TaskSection(**base, compare="rouge_l", rouge_tokenizer="no_such_module:fn")
    with pytest.raises(ValueError, match="MODULE:CALLABLE"):
        TaskSection(**base, compare="rouge_l", rouge_tokenizer="bogus")


def _image_task(tmp_path, image):
    files = {s: str(write_jsonl(tmp_path / f"{s}.jsonl",
                                [{"q": "w1", "a": "w2"}, {"q": "w3", "a": "w4", "image": image}]))
             for s in ("fitness", "validation", "test")}
    return TaskSection(name="i", type="exact_match", data=files, prompt="{q}", target="{a}")


def test_image_records_fail_on_one_line(tmp_path):
    from PIL import Image

    tokenizer = load_tokenizer(build_word_tokenizer(WORDS, tmp_path / "tok", vocab_size=64))
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "broken.png").write_text("not an image")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "pics" / "red.png")
    where = f"{tmp_path / 'fitness.jsonl'}:2"
    cases = [("pics/missing.png", f"{where}: image {tmp_path / 'pics/missing.png'} does not exist"),
             ("pics/broken.png", f"{where}: cannot read image {tmp_path / 'pics/broken.png'}"),
             (7, f"{where}: field 'image' must be a path"),
             ("pics/red.png", f"{where}: the record has an image but the config names no "
                              "vision_model")]
    for image, message in cases:
        with pytest.raises(TaskError) as info:
            load_task(_image_task(tmp_path, image), tokenizer, 128)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
        assert isinstance(info.value, ConfigError)
