"""The vocabulary and its file, `word_counts.txt`, in im2txt's format.

One `word count` a line, by descending count; a word's id is its 0-based line number;
the unknown word is not in the file and its id is the number of lines. Python 3 runs
of the original wrote lines like `b'a' 969108`: both forms are read.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from showtell.errors import ShowtellError

START_WORD = "<S>"
END_WORD = "</S>"
UNKNOWN_WORD = "<UNK>"
MARKERS = ("start_word", "end_word", "unknown_word")  # `Vocabulary.markers`' keys


class Vocabulary:
    """Maps words to ids and back; ids beyond the file's words are the unknown word."""

    def __init__(
        self,
        words: Sequence[str],
        counts: Sequence[int] | None = None,
        *,
        start_word: str = START_WORD,
        end_word: str = END_WORD,
        unknown_word: str = UNKNOWN_WORD,
    ) -> None:
        self.words = list(words)
        self.counts = list(counts) if counts is not None else None
        self.start_word, self.end_word, self.unknown_word = start_word, end_word, unknown_word
        self._ids = {word: i for i, word in enumerate(self.words)}
        if len(self._ids) != len(self.words):
            raise ShowtellError("vocabulary has duplicate words")
        self.unk_id = len(self.words)

    def __len__(self) -> int:
        """Number of ids: the file's words plus the unknown word (im2txt's vocab_size)."""
        return len(self.words) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def word_to_id(self, word: str) -> int:
        return self._ids.get(word, self.unk_id)

    def id_to_word(self, word_id: int) -> str:
        return self.words[word_id] if 0 <= word_id < len(self.words) else self.unknown_word

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.word_to_id(t) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.id_to_word(i) for i in ids]

    @property
    def start_id(self) -> int:
        return self.word_to_id(self.start_word)

    @property
    def end_id(self) -> int:
        return self.word_to_id(self.end_word)

    @property
    def markers(self) -> dict[str, str]:
        """The start, end and unknown words, as `load`/`__init__` take them: they are
        not in word_counts.txt, so whoever saves the file must keep them beside it."""
        return {name: getattr(self, name) for name in MARKERS}

    @classmethod
    def build(
        cls, captions: Iterable[Sequence[str]], min_word_count: int = 4, **words: str
    ) -> Vocabulary:
        """im2txt's `_create_vocab`: count every token of the (training) captions, keep
        those seen at least `min_word_count` times, most frequent first; ties keep the
        order in which the words first appeared (a stable sort over a Counter)."""
        counter: Counter[str] = Counter()
        for caption in captions:
            counter.update(caption)
        kept = [(w, c) for w, c in counter.items() if c >= min_word_count]
        kept.sort(key=lambda wc: wc[1], reverse=True)
        return cls([w for w, _ in kept], [c for _, c in kept], **words)

    def save(self, path: str | Path) -> None:
        """Writes `word count` lines, joined by newlines as im2txt did."""
        counts = self.counts if self.counts is not None else [0] * len(self.words)
        Path(path).write_text(
            "\n".join(f"{w} {c}" for w, c in zip(self.words, counts, strict=True)),
            encoding="utf-8",
        )

    @classmethod
    def load(cls, path: str | Path, **words: str) -> Vocabulary:
        """Reads a word_counts.txt (ours, im2txt's, or its Python 3 `b'word'` form)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ShowtellError(f"{path}: cannot read vocabulary file: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ShowtellError(f"{path}: vocabulary file is not UTF-8 text") from e
        vocab_words: list[str] = []
        counts: list[int] = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            word, count = _parse_vocab_line(line, path, line_number)
            vocab_words.append(word)
            counts.append(count)
        if not vocab_words:
            raise ShowtellError(f"{path}: vocabulary file has no words")
        return cls(vocab_words, counts, **words)


def _parse_vocab_line(line: str, path: Path, line_number: int) -> tuple[str, int]:
    word, _, count = line.rstrip().rpartition(" ")
    if not word or not count.isdigit():
        raise ShowtellError(f"{path}:{line_number}: expected 'word count', got {line!r}")
    if len(word) >= 3 and word[0] == "b" and word[1] in "'\"" and word[-1] == word[1]:
        try:
            literal = ast.literal_eval(word)
        except (ValueError, SyntaxError) as e:
            raise ShowtellError(f"{path}:{line_number}: bad bytes literal {word!r}") from e
        word = literal.decode("utf-8")
    return word, int(count)
