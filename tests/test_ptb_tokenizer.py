"""The Python PTB tokenizer against Stanford's Java one, as pycocoevalcap runs it."""

from __future__ import annotations

import contextlib
import io

import pytest
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ptb_corpus import CATEGORIES, captions, require_java
from showtell.evaluation.ptb_tokenizer import TokenizerError, line_breaks, tokenize


def _official(captions_for_image: dict[int, list[str]]) -> dict[int, list[str]]:
    """pycocoevalcap's PTBTokenizer.tokenize: one JVM run for all the captions."""
    with contextlib.redirect_stderr(io.StringIO()):
        return PTBTokenizer().tokenize(
            {i: [{"caption": c} for c in cs] for i, cs in captions_for_image.items()}
        )


@pytest.mark.slow
def test_corpus_tokenized_as_stanford_does() -> None:
    require_java()
    corpus = captions(20_000)
    assert len(corpus) >= 20_000
    text = "\n".join(corpus)
    assert all(f in text for fs in CATEGORIES.values() for f in fs)
    batch = {i: [c] for i, c in enumerate(corpus)}
    official = _official(batch)
    ours = tokenize(batch)
    differences = [(i, corpus[i], ours.get(i), official.get(i)) for i in batch]
    differences = [d for d in differences if d[2] != d[3]]
    assert not differences, f"{len(differences)} differ, e.g. {differences[:5]}"
    # The corpus is not trivial: punctuation went, tokens were split and kept.
    tokens = {t for cs in official.values() for c in cs for t in c.split(" ")}
    assert {"!!", "?!", "-lrb-", "'s", "n't", "u.s.", "a@b.com", "http://example.com"} <= tokens
    assert not tokens & {".", ",", "!", "?", "...", "''", "`"}


def test_line_breaks_shift_captions_as_in_the_official_pipeline() -> None:
    require_java()
    batch = {
        1: ["A dog.\rA cat!", "two\u2028birds", "ends with a CR\r"],
        2: ["a man\non a horse", "  "],
        3: ["the last one", ""],
    }
    assert line_breaks([c for cs in batch.values() for c in cs]) == [
        "A dog.\rA cat!",
        "two\u2028birds",
    ]
    official = _official(batch)
    assert tokenize(batch) == official
    assert tokenize(batch, "java") == official
    # The oddity reproduced: "\r" and "\u2028" start new lines, so captions take their
    # neighbours' tokens ("\r" then the joining "\n" is one line break: no shift), and
    # "the last one" is lost.
    assert official[1] == ["a dog", "a cat", "two"]
    assert official[2] == ["birds", "ends with a cr"]
    assert official[3] == ["a man on a horse", ""]


def test_examples_from_the_issue_without_java() -> None:
    """Stanford's output on the captions quoted in issue 12 (the Java tokenizer's own)."""
    got = tokenize(
        {
            1: ["A yellow plain A against backdrop. yellow a"],
            2: ["A BIG GREEN NUMBER SEVEN ON A WHITE BACKGROUND!!"],
            3: [" A BIG GREEN NUMBER SEVEN ON A GRAY BACKGROUND. \n!!"],
        }
    )
    assert got[1] == ["a yellow plain a against backdrop yellow a"]
    assert got[2] == ["a big green number seven on a white background !!"]
    assert got[3] == ["a big green number seven on a gray background !!"]


def test_text_that_cannot_be_written_is_an_error() -> None:
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        tokenize({1: ["a dog \ud83d"]})
