"""The vectorised CIDEr-D reward against pycocoevalcap's own CiderScorer: with document
frequencies from the scored references (the official `Cider`) and from a separate
training corpus (SCST's "corpus" mode, injected into CiderScorer)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from showtell.errors import ShowtellError
from showtell.evaluation.cider import CiderD, DocumentFrequencies

WORDS = [
    "a",
    "the",
    "red",
    "blue",
    "small",
    "big",
    "cat",
    "dog",
    "on",
    "under",
    "with",
    "and",
    "is",
    "of",
    "box",
    "ball",
]


def caption(rng: random.Random, words: list[str] = WORDS) -> str:
    """Few words, so that n-grams repeat within and across captions (clipping, df > 1);
    lengths 0..14 (empty captions and length penalties included)."""
    return " ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 2, 3, *range(4, 15)])))


def corpus(seed: int, images: int, words: list[str] = WORDS) -> list[list[str]]:
    rng = random.Random(seed)
    return [[caption(rng, words) for _ in range(rng.randint(1, 6))] for _ in range(images)]


class _Sized(list):
    """CiderScorer takes N = len(crefs): this list of the scored references reports the
    training corpus's N instead."""

    def __init__(self, items: list, size: int) -> None:
        super().__init__(items)
        self.size = size

    def __len__(self) -> int:
        return self.size


def official_scores(candidates, references, training=None) -> np.ndarray:
    """pycocoevalcap's CiderScorer, its df (and N) from `training` when given."""
    scorer = CiderScorer(n=4, sigma=6.0)
    for candidate, refs in zip(candidates, references, strict=True):
        scorer += (candidate, refs)
    if training is None:
        return np.array(scorer.compute_score()[1])
    corpus_scorer = CiderScorer(n=4, sigma=6.0)
    for refs in training:
        corpus_scorer += (None, refs)
    corpus_scorer.compute_doc_freq()  # pycocoevalcap's own df over the training corpus
    scorer.document_frequency = corpus_scorer.document_frequency
    scorer.crefs = _Sized(scorer.crefs, len(training))
    return np.array(scorer.compute_cider())


def test_df_from_the_scored_references_is_the_official_cider() -> None:
    references = corpus(1, 300)
    rng = random.Random(2)
    candidates = [caption(rng) for _ in references]
    candidates[0] = references[0][0]  # a perfect match among them
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [c] for i, c in enumerate(candidates)}
    mean, per_image = Cider().compute_score(gts, res)
    got = CiderD(references).score(candidates, range(len(candidates)))
    np.testing.assert_allclose(got, per_image, rtol=1e-9, atol=1e-6)
    assert got.mean() == pytest.approx(mean, abs=1e-6)
    assert got.max() > 1 and (got == 0).any()  # not all trivial


def test_training_corpus_df_matches_cider_scorer_with_that_df(tmp_path: Path) -> None:
    training = corpus(3, 400)
    df = DocumentFrequencies.from_references(training)
    df.save(tmp_path / "df.npz")
    loaded = DocumentFrequencies.load(tmp_path / "df.npz")
    # K = 5 samples per image, for training images and for unseen images with new words.
    held_out = corpus(4, 30, [*WORDS, "zebra", "kite", "red-ish"])
    for references in (training[:60], held_out):
        rng = random.Random(len(references))
        images = np.repeat(np.arange(len(references)), 5)
        candidates = [caption(rng, [*WORDS, "zebra", "unseen"]) for _ in images]
        expected = official_scores(candidates, [references[i] for i in images], training)
        for frequencies in (df, loaded):
            got = CiderD(references, frequencies).score(candidates, images)
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-6)
        assert expected.max() > 1


def test_model_token_ids_through_a_word_table() -> None:
    training = corpus(5, 50)
    scorer = CiderD(training, DocumentFrequencies.from_references(training))
    vocab = ["<S>", "</S>", *WORDS, "<UNK>"]
    table = scorer.word_table(vocab)
    rng = random.Random(6)
    sentences = [caption(rng) for _ in range(40)]
    ids = np.zeros((40, 16), dtype=np.int64)  # model ids; the mask marks the words
    mask = np.zeros((40, 16), dtype=bool)
    for i, s in enumerate(sentences):
        ids[i, : len(s.split())] = [vocab.index(w) for w in s.split()]
        mask[i, : len(s.split())] = True
    images = np.arange(40) % 50
    got = scorer.score_ids(np.where(mask, table[ids], 0), images)
    np.testing.assert_array_equal(got, scorer.score(sentences, images))


def test_a_batch_without_a_single_matching_ngram_scores_zero() -> None:
    scorer = CiderD([["a red cat"], ["the dog"]])
    got = scorer.score(["zebra", "unseen words only", ""], [0, 1, 1])
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])


def test_bad_files_and_inputs_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "df.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ShowtellError, match=r"df\.npz: not a CIDEr-D document-frequency file"):
        DocumentFrequencies.load(bad)
    with pytest.raises(ShowtellError, match="without reference captions"):
        CiderD([["a cat"], []])
