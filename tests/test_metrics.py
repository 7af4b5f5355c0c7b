"""Our metrics pipeline (Python PTB tokenization + the official scorers) against the
official COCO caption evaluation pipeline (Stanford's Java PTBTokenizer + scorers)."""

from __future__ import annotations

import contextlib
import gc
import io
import threading

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as meteor_module
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ptb_corpus import image_case, require_java
from showtell.evaluation import metrics
from showtell.evaluation.metrics import score_captions

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


def _official(references: dict, hypotheses: dict, meteor: Meteor | None) -> dict[str, float]:
    """pycocoevalcap's COCOEvalCap.evaluate, without its COCO-object plumbing: the
    references and the results tokenized by the Java PTBTokenizer, then the scorers."""
    tokenizer = PTBTokenizer()
    with contextlib.redirect_stderr(io.StringIO()):
        gts = tokenizer.tokenize(
            {i: [{"caption": c} for c in refs] for i, refs in references.items()}
        )
        res = tokenizer.tokenize({i: [{"caption": h}] for i, h in hypotheses.items()})
    scores = {}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update({f"Bleu_{n + 1}": bleu[n] for n in range(4)})
    if meteor is not None:
        scores["METEOR"], _ = meteor.compute_score(gts, res)
    scores["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    return scores


def test_metrics_match_the_official_evaluation() -> None:
    """A small case, all metrics but METEOR (see the next test)."""
    require_java()
    ours = score_captions(REFERENCES, HYPOTHESES, meteor=False)
    official = _official(REFERENCES, HYPOTHESES, meteor=None)
    for name, value in official.items():
        assert ours.corpus[name] == pytest.approx(value, abs=1e-6), name
    # Sanity of the fixture itself: a perfect caption beats an empty one.
    assert ours.per_image["CIDEr"][3] > ours.per_image["CIDEr"][4] == 0.0
    assert 0 < ours.corpus["CIDEr"] < 10 and 0 < ours.corpus["Bleu_4"] < 1


@pytest.mark.slow
def test_metrics_match_the_official_evaluation_on_1000_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Captions from the generated corpus (tests/ptb_corpus.py): every metric equals
    COCOEvalCap's, which tokenizes with the Java PTBTokenizer. One METEOR process serves
    both (its start-up, loading the paraphrase tables, takes most of this test)."""
    require_java()
    references, hypotheses = image_case(1000)
    meteor = Meteor()
    monkeypatch.setattr(meteor_module, "Meteor", lambda: meteor)
    ours = score_captions(references, hypotheses)
    official = _official(references, hypotheses, meteor)
    assert set(official) == set(metrics.METRIC_NAMES)
    for name, value in official.items():
        tolerance = 1e-3 if name == "METEOR" else 1e-6
        assert ours.corpus[name] == pytest.approx(value, abs=tolerance), name
    # Not a degenerate case: every metric is well inside its range.
    assert all(0.05 < ours.corpus[n] < 0.95 for n in metrics.METRIC_NAMES if n != "CIDEr")
    assert 0.2 < ours.corpus["CIDEr"] < 5


def test_meteor_is_not_computed_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    scores = score_captions(REFERENCES, HYPOTHESES)
    assert scores.corpus["METEOR"] is None and "needs Java" in scores.meteor_note
    assert scores.corpus["CIDEr"] is not None and scores.corpus["CIDEr"] > 0
    assert "n/a" in metrics.format_scores(scores)


def test_mismatched_ids_are_an_error() -> None:
    with pytest.raises(ValueError, match="differ on 1 image ids"):
        score_captions({1: ["a"], 2: ["b"]}, {1: "a"})


def test_a_failing_meteor_jar_is_one_error_and_leaves_nothing_to_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pycocoevalcap's `Meteor.compute_score` leaves its lock held when the JVM fails, and
    `Meteor.__del__` takes it again: unhandled, the object's collection (at interpreter
    exit at the latest) blocks for ever. Here the jar is missing, so Java exits at once."""
    require_java()
    monkeypatch.setattr(meteor_module, "METEOR_JAR", "no-such-meteor.jar")
    made: list[Meteor] = []
    real_init = Meteor.__init__

    def keep(self: Meteor) -> None:
        real_init(self)
        made.append(self)

    monkeypatch.setattr(Meteor, "__init__", keep)
    with pytest.raises(metrics.MeteorError, match=r"METEOR \(Java\) failed: .*jarfile"):
        score_captions(REFERENCES, HYPOTHESES, meteor=True)
    assert len(made) == 1 and made[0].meteor_p.poll() is not None  # the JVM has ended
    collected = threading.Thread(target=lambda: (made.clear(), gc.collect()), daemon=True)
    collected.start()
    collected.join(timeout=30)
    assert not collected.is_alive(), "Meteor.__del__ blocked on the lock compute_score held"
