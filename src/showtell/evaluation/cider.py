"""CIDEr-D as a reward: the official formula, document frequencies computed once, many
captions scored at a time with numpy.

The formula is pycocoevalcap's `CiderScorer` (what `metrics.py` reports as CIDEr), term
for term: n-grams n = 1..4 of whitespace tokens; each n-gram weighted by
tf * (log N - log max(1, df)); per n, the clipped cosine
sum(min(c, r) * r) / (|c| |r|) between the candidate's vector c and each reference's r
(0 where a norm is 0), times the Gaussian length penalty exp(-d^2 / (2 sigma^2)),
sigma = 6, where d is the difference of the two captions' bigram counts (the official
code counts the n == 1 index; the same difference as of word counts wherever the cosine
is not 0); averaged over n, summed over the references, divided by their number, x 10.

What differs from the official evaluation is where df and N come from. pycocoevalcap
takes them from the references of the images being scored; self-critical training
(Rennie et al. 2017, their `CiderD` in "corpus" mode) takes them once from the whole
training set's references, so that a batch's reward does not depend on which images
share the batch. `DocumentFrequencies.from_references` computes them, `save`/`load`
keep them in a small .npz (words, packed n-gram keys, counts, N). With df taken from
the scored references themselves (`CiderD(references)`), the scores are pycocoevalcap's.

Vectorised: words become integer ids (1..65,535, 0 is padding), an n-gram becomes one
uint64 (16 bits per word: exact, no hashing collisions), the references' weighted
vectors and norms are computed once per reference set, and a batch of candidates is
matched against its images' references with sorts, searchsorted and bincount: no Python
loop over captions or n-grams (tests/test_cider_reward.py checks it against
pycocoevalcap to 1e-6; benchmarks/reward.py measures it).

In SCST, once per training run and then per step:

    df = DocumentFrequencies.from_references(train_refs)  # train_refs[i]: image i's
    df.save(path)                                          # tokenized references
    scorer = CiderD(train_refs, DocumentFrequencies.load(path))
    table = scorer.word_table([*vocab.words, vocab.unknown_word])  # model id -> scorer id
    rewards = scorer.score_ids(np.where(mask, table[tokens], 0), image_indices)

where `tokens` (M, T) are the sampled words without the start word, `mask` marks the
words before the end word, and `image_indices` (M,) index `train_refs`. The references
must be in the model's token space (the training captions' tokens) for a reward, or the
official tokenization (`metrics.ptb_tokenize`) for the official metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from showtell.errors import ShowtellError

MAX_N = 4
SIGMA = 6.0
BITS = 16  # per word in a packed n-gram key
MAX_WORDS = (1 << BITS) - 1  # word ids 1..65,535; 0 is padding

Tokens = str | Sequence[str]  # a caption: whitespace-separated text or its tokens


def _split(caption: Tokens) -> Sequence[str]:
    return caption.split() if isinstance(caption, str) else caption


class WordIds:
    """Words -> ids 1..65,535, in the order first seen (0 is padding)."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.ids: dict[str, int] = {}
        for word in words:
            self.add(word)

    def add(self, word: str) -> int:
        index = self.ids.get(word)
        if index is None:
            if len(self.ids) >= MAX_WORDS:
                raise ShowtellError(
                    f"CIDEr-D reward: more than {MAX_WORDS:,} distinct words (n-grams are "
                    "packed 16 bits a word)"
                )
            index = self.ids[word] = len(self.ids) + 1
        return index

    @property
    def words(self) -> list[str]:
        return list(self.ids)

    def encode(self, captions: Sequence[Tokens]) -> np.ndarray:
        """Captions -> (M, T) uint64 word ids, padded with 0 (T >= MAX_N)."""
        rows = [[self.add(w) for w in _split(c)] for c in captions]
        out = np.zeros((len(rows), max([MAX_N, *map(len, rows)])), dtype=np.uint64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out


def ngram_keys(ids: np.ndarray) -> np.ndarray:
    """(M, T) word ids padded with 0 -> (M, 4T - 6) packed n-gram keys, n = 1..4,
    0 where the n-gram runs into the padding. A key's order n is its count of non-zero
    16-bit fields (word ids are never 0)."""
    ids = np.asarray(ids, dtype=np.uint64)
    if ids.shape[1] < MAX_N:
        ids = np.pad(ids, ((0, 0), (0, MAX_N - ids.shape[1])))
    keys, previous = [ids], ids
    for n in range(1, MAX_N):
        last = ids[:, n:]
        previous = np.where(last != 0, previous[:, :-1] | (last << np.uint64(BITS * n)), 0)
        keys.append(previous.astype(np.uint64))
    return np.concatenate(keys, axis=1)


def key_order(keys: np.ndarray) -> np.ndarray:
    """n - 1 for each packed n-gram key."""
    return sum(((keys >> np.uint64(BITS * n)) != 0).astype(np.int64) for n in range(1, MAX_N))


def count_ngrams(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each caption's distinct n-grams and their counts: (row, key, count) arrays,
    sorted by row, then key."""
    keys = np.sort(ngram_keys(ids), axis=1)
    p = keys.shape[1]
    flat = keys.ravel()
    boundary = np.ones_like(flat, dtype=bool)
    boundary[1:] = flat[1:] != flat[:-1]
    boundary[::p] = True  # every row starts a run
    starts = np.flatnonzero(boundary)
    counts = np.diff(starts, append=flat.size)
    real = flat[starts] != 0  # the padding's run is no n-gram
    return starts[real] // p, flat[starts[real]], counts[real]


def bigram_counts(ids: np.ndarray) -> np.ndarray:
    """The official length: the number of bigrams, max(words - 1, 0)."""
    return np.maximum((np.asarray(ids) != 0).sum(1) - 1, 0)


class DocumentFrequencies:
    """For each n-gram, the number of images whose references contain it, and the
    number of images N: what CIDEr-D's idf weights log N - log max(1, df) need."""

    def __init__(self, words: Sequence[str], keys: np.ndarray, df: np.ndarray, num_images: int):
        self.word_ids = WordIds(words)
        order = np.argsort(keys)
        self.keys = np.asarray(keys, dtype=np.uint64)[order]
        self.df = np.asarray(df, dtype=np.int64)[order]
        self.num_images = int(num_images)

    @classmethod
    def from_references(cls, references: Iterable[Sequence[Tokens]]) -> DocumentFrequencies:
        """`references`: for each image, its reference captions (tokenized)."""
        word_ids = WordIds()
        image_of, captions = [], []
        for image, refs in enumerate(references):
            image_of.extend([image] * len(refs))
            captions.extend(refs)
        if not captions:
            raise ShowtellError("CIDEr-D document frequencies: no reference captions")
        row, key, _ = count_ngrams(word_ids.encode(captions))
        image = np.asarray(image_of, dtype=np.int64)[row]
        # One count per (n-gram, image): sort by key then image, keep the first of each.
        order = np.lexsort((image, key))
        key, image = key[order], image[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = (key[1:] != key[:-1]) | (image[1:] != image[:-1])
        unique_keys, df = np.unique(key[first], return_counts=True)
        return cls(word_ids.words, unique_keys, df, image_of[-1] + 1)

    def log_df(self, keys: np.ndarray) -> np.ndarray:
        """log(max(1, df)) of each key (df 0 for n-grams never seen)."""
        if not len(self.keys):
            return np.zeros(len(keys))
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        df = np.where(self.keys[pos] == keys, self.df[pos], 0)
        return np.log(np.maximum(1.0, df.astype(np.float64)))

    def save(self, path: str | Path) -> None:
        """A compressed .npz: words (UTF-8, one a line), keys, df, num_images."""
        words = "\n".join(self.word_ids.words).encode()
        np.savez_compressed(
            path,
            words=np.frombuffer(words, dtype=np.uint8),
            keys=self.keys,
            df=self.df,
            num_images=np.int64(self.num_images),
        )

    @classmethod
    def load(cls, path: str | Path) -> DocumentFrequencies:
        try:
            with np.load(path, allow_pickle=False) as data:
                words = data["words"].tobytes().decode().split("\n")
                return cls(words, data["keys"], data["df"], int(data["num_images"]))
        except (OSError, KeyError, ValueError, UnicodeDecodeError) as e:
            raise ShowtellError(f"{path}: not a CIDEr-D document-frequency file ({e})") from e


class CiderD:
    """Scores candidate captions against their image's references.

    `references[i]`: image i's reference captions. `df`: document frequencies from the
    training references (SCST); None takes them from these references (the official
    evaluation's CIDEr-D). The references' vectors and norms are computed here, once."""

    def __init__(
        self,
        references: Sequence[Sequence[Tokens]],
        df: DocumentFrequencies | None = None,
        sigma: float = SIGMA,
    ) -> None:
        if df is None:
            df = DocumentFrequencies.from_references(references)
        if any(len(refs) == 0 for refs in references):
            raise ShowtellError("CIDEr-D: an image without reference captions")
        self.df, self.sigma = df, sigma
        self.word_ids = df.word_ids  # shared: the keys in `df` use these ids
        self.log_n = np.log(float(df.num_images))
        self.num_refs = np.array([len(r) for r in references], dtype=np.int64)
        self.first_ref = np.concatenate([[0], np.cumsum(self.num_refs)[:-1]])
        ids = self.word_ids.encode([c for refs in references for c in refs])
        self.ref_image = np.repeat(np.arange(len(references)), self.num_refs)
        self.ref_length = bigram_counts(ids)
        ref, key, count = count_ngrams(ids)
        weight = self.log_n - df.log_df(key)
        self.ref_norm = self._norms(ref, key, count * weight, len(ids))
        # For matching: each reference n-gram under (image, dense key id), sorted.
        self.ref_keys = np.unique(key)
        join = self.ref_image[ref] * len(self.ref_keys) + np.searchsorted(self.ref_keys, key)
        order = np.argsort(join, kind="stable")
        self.join, self.join_ref, self.join_count = join[order], ref[order], count[order]

    @staticmethod
    def _norms(row: np.ndarray, key: np.ndarray, value: np.ndarray, rows: int) -> np.ndarray:
        """(rows, 4) Euclidean norms of each row's weighted n-gram vector, per n."""
        index = row * MAX_N + key_order(key)
        return np.sqrt(np.bincount(index, value**2, minlength=rows * MAX_N)).reshape(rows, MAX_N)

    def word_table(self, words: Sequence[str]) -> np.ndarray:
        """Scorer ids of a vocabulary's words, in id order, to turn a model's token ids
        into the ids `score_ids` takes: `table[token_ids]`. For a showtell Vocabulary
        pass `[*vocab.words, vocab.unknown_word]` (the unknown word's id is last)."""
        return np.array([self.word_ids.add(w) for w in words], dtype=np.uint64)

    def score(self, captions: Sequence[Tokens], images: Sequence[int] | np.ndarray) -> np.ndarray:
        """CIDEr-D of each caption (text or tokens) against the references of its image
        (an index into `references`)."""
        return self.score_ids(self.word_ids.encode(captions), images)

    def score_ids(self, ids: np.ndarray, images: Sequence[int] | np.ndarray) -> np.ndarray:
        """CIDEr-D of each row of (M, T) scorer word ids (0-padded at the end)."""
        ids = np.asarray(ids, dtype=np.uint64)
        images = np.asarray(images, dtype=np.int64)
        m = len(ids)
        if len(images) != m:
            raise ValueError(f"{m} captions but {len(images)} image indices")
        if m == 0:
            return np.zeros(0)
        row, key, count = count_ngrams(ids)
        weight = self.log_n - self.df.log_df(key)
        norm = self._norms(row, key, count * weight, m)
        length = bigram_counts(ids)

        # Pairs (caption, one of its image's references), caption-major.
        pairs_per = self.num_refs[images]
        pair_offset = np.concatenate([[0], np.cumsum(pairs_per)[:-1]])
        pair_caption = np.repeat(np.arange(m), pairs_per)
        pair_ref = self.first_ref[images][pair_caption] + (
            np.arange(len(pair_caption)) - pair_offset[pair_caption]
        )

        # Each caption n-gram against the references of its image that hold it.
        pos = np.minimum(np.searchsorted(self.ref_keys, key), len(self.ref_keys) - 1)
        found = self.ref_keys[pos] == key
        entry = np.flatnonzero(found)
        join = images[row[entry]] * len(self.ref_keys) + pos[entry]
        lo = np.searchsorted(self.join, join, "left")
        hits = np.searchsorted(self.join, join, "right") - lo
        which = np.repeat(entry, hits)  # caption n-gram of each match
        match = (
            np.repeat(lo, hits) + np.arange(hits.sum()) - np.repeat(np.cumsum(hits) - hits, hits)
        )
        ref, ref_count = self.join_ref[match], self.join_count[match]
        caption = row[which]
        pair = pair_offset[caption] + ref - self.first_ref[images[caption]]
        # min(c, r) * r with c = tf_c * w and r = tf_r * w (the official clipping).
        value = weight[which] ** 2 * np.minimum(count[which], ref_count) * ref_count
        numerator = (
            np.bincount(
                pair * MAX_N + key_order(key[which]), value, minlength=len(pair_caption) * MAX_N
            )
            .astype(np.float64, copy=False)  # bincount of no matches at all gives int64
            .reshape(-1, MAX_N)
        )

        denominator = norm[pair_caption] * self.ref_norm[pair_ref]
        cosine = np.divide(
            numerator, denominator, out=numerator.copy(), where=denominator != 0
        )  # pycocoevalcap divides only where both norms are non-zero
        delta = (length[pair_caption] - self.ref_length[pair_ref]).astype(np.float64)
        cosine *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        total = np.bincount(pair_caption, cosine.mean(1), minlength=m)
        return total / pairs_per * 10.0
