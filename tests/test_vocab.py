from __future__ import annotations

from pathlib import Path

import pytest

from showtell.data.tokenize import tokenize_caption
from showtell.data.vocab import Vocabulary
from showtell.errors import ShowtellError


def test_build_orders_by_count_then_first_appearance() -> None:
    captions = [
        ["<S>", "b", "a", "</S>"],
        ["<S>", "a", "c", "b", "</S>"],
        ["<S>", "d", "c", "</S>"],
        ["<S>", "rare", "</S>"],
    ]
    vocab = Vocabulary.build(captions, min_word_count=2)
    # <S> and </S> 4 each (first seen: <S>), then b, a, c with 2 each in order of
    # first appearance; d and rare (1 each) are dropped.
    assert vocab.words == ["<S>", "</S>", "b", "a", "c"]
    assert vocab.counts == [4, 4, 2, 2, 2]
    assert len(vocab) == 6  # + <UNK>
    assert vocab.word_to_id("rare") == vocab.unk_id == 5
    assert vocab.id_to_word(5) == "<UNK>"
    assert vocab.encode(["<S>", "a", "zzz"]) == [0, 3, 5]
    assert (vocab.start_id, vocab.end_id) == (0, 1)


def test_file_format_is_im2txts(tmp_path: Path) -> None:
    vocab = Vocabulary(["a", "<S>", "</S>", "ünï"], [10, 5, 5, 4])
    path = tmp_path / "word_counts.txt"
    vocab.save(path)
    # im2txt wrote "\n".join(...): no newline after the last line.
    assert path.read_bytes() == "a 10\n<S> 5\n</S> 5\nünï 4".encode()
    assert Vocabulary.load(path) == vocab
    assert Vocabulary.load(path).counts == [10, 5, 5, 4]


def test_reads_python3_bytes_lines(tmp_path: Path) -> None:
    path = tmp_path / "word_counts.txt"
    path.write_text(
        "b'a' 969108\nb'<S>' 586368\nb'</S>' 586368\nb\"don't\" 12\nb'caf\\xc3\\xa9' 5\n"
    )
    vocab = Vocabulary.load(path)
    assert vocab.words == ["a", "<S>", "</S>", "don't", "café"]
    assert vocab.counts == [969108, 586368, 586368, 12, 5]
    assert vocab.word_to_id("café") == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a 1\nnocount\n", r"word_counts.txt:2: expected 'word count'"),
        ("a 1\nb x\n", r"word_counts.txt:2: expected 'word count'"),
        ("", r"word_counts.txt: vocabulary file has no words"),
    ],
)
def test_bad_vocabulary_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "word_counts.txt"
    path.write_text(text)
    with pytest.raises(ShowtellError, match=message):
        Vocabulary.load(path)
    with pytest.raises(ShowtellError, match="cannot read"):
        Vocabulary.load(tmp_path / "missing.txt")


def test_tokenizer_matches_im2txt_for_single_sentences() -> None:
    assert tokenize_caption("A man riding a wave on top of a surfboard.") == [
        "a",
        "man",
        "riding",
        "a",
        "wave",
        "on",
        "top",
        "of",
        "a",
        "surfboard",
        ".",
    ]
    assert tokenize_caption("Two dogs, one cat's toy") == [
        "two",
        "dogs",
        ",",
        "one",
        "cat",
        "'s",
        "toy",
    ]
    assert tokenize_caption("   ") == []
