"""Our metrics pipeline (Python PTB tokenization + the official scorers) against the
official COCO caption evaluation pipeline (Stanford's Java PTBTokenizer + scorers)."""

from __future__ import annotations

import contextlib
import io

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from showtell.evaluation import metrics
from showtell.evaluation.metrics import ptb_tokenize, score_captions

needs_java = pytest.mark.skipif(not metrics.java_available(), reason="needs Java")

CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs, one cat's toy!",
    'He said "hello" (loudly) -- then left...',
    "A T-shirt costs $5.99 in the U.S.",
    "don't can't won't I'm you're they'll",
    "A dog's ball; a cat: 3 mice?",
    "",
    "   ",
    "A RED Circle and a big blue BOX .",
    "there are two shapes : a red star , a blue disc",
    "It's 10:30 a.m. now",
    "a 1,000-year-old tree",
    "rock 'n' roll",
    "a man with a hat/cap",
    "a 'quoted' word and a dog-and-cat 'friendship'.",
    "e-mail me at a@b.com or www.example.com.",
    "#1 best, 100% sure",
    "A  kitchen\nwith two   ovens",
]

REFERENCES = {
    1: [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a big wave!",
        "Someone surfing (on a board) in the ocean.",
    ],
    2: ["Two dogs play with a ball.", "Two DOGS, playing; with a red ball", "dogs playing"],
    3: [
        "A red circle and a blue square.",
        "A big red disc, a little blue box .",
        "Two shapes: a red circle and a blue square",
    ],
    4: ["A kitchen with two ovens.", "an oven in a kitchen", "A modern kitchen's ovens"],
    5: ["A cat on a mat.", "the cat sits on the mat", "A cat's mat"],
}
HYPOTHESES = {
    1: "a man riding a wave on a surfboard .",
    2: "Two dogs, playing with a ball!",
    3: "a red circle and a blue square",
    4: "",  # an empty hypothesis
    5: "A dog (on a mat).",
}


@needs_java
def test_python_ptb_tokenizer_matches_stanfords() -> None:
    with contextlib.redirect_stderr(io.StringIO()):
        official = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    for i, caption in enumerate(CAPTIONS):
        assert ptb_tokenize(caption) == official[i][0], caption


def _official(references: dict, hypotheses: dict) -> dict[str, float]:
    """pycocoevalcap's COCOEvalCap, without its COCO-object plumbing."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in hypotheses.items()})
    scores = {}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update({f"Bleu_{n + 1}": bleu[n] for n in range(4)})
    scores["METEOR"], _ = Meteor().compute_score(gts, res)
    scores["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    return scores


@needs_java
def test_metrics_match_the_official_evaluation() -> None:
    ours = score_captions(REFERENCES, HYPOTHESES)
    official = _official(REFERENCES, HYPOTHESES)
    for name, value in official.items():
        assert ours.corpus[name] == pytest.approx(value, abs=1e-6), name
    # Sanity of the fixture itself: a perfect caption beats an empty one.
    assert ours.per_image["CIDEr"][3] > ours.per_image["CIDEr"][4] == 0.0
    assert 0 < ours.corpus["CIDEr"] < 10 and 0 < ours.corpus["Bleu_4"] < 1


def test_meteor_is_not_computed_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    scores = score_captions(REFERENCES, HYPOTHESES)
    assert scores.corpus["METEOR"] is None and "needs Java" in scores.meteor_note
    assert scores.corpus["CIDEr"] is not None and scores.corpus["CIDEr"] > 0
    assert "n/a" in metrics.format_scores(scores)


def test_mismatched_ids_are_an_error() -> None:
    with pytest.raises(ValueError, match="differ on 1 image ids"):
        score_captions({1: ["a"], 2: ["b"]}, {1: "a"})
