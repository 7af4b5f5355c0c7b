"""Self-critical sequence training (SCST; Rennie et al. 2017, "Self-critical Sequence
Training for Image Captioning"): after cross-entropy training, the decoder learns to
raise the CIDEr-D of the captions it generates itself.

    showtell train --scst --train_dir=RUN --number_of_steps=N ...   (RUN: a phase-1 run)

One step, for a batch of B training images (`--batch_size` images, not pairs):
- sample K captions per image (`--scst_samples`) from the model's own next-word
  distribution (multinomial, `model.step`, no gradients);
- reward each with its CIDEr-D against the image's training references, document
  frequencies from all training references (`evaluation/cider.py`: computed once, saved
  as `cider_df.npz` in the train_dir, loaded on resume), plus `--scst_bleu_weight` x
  its sentence-level BLEU-4 (pycocoevalcap's formula, vectorised) when asked;
- baseline b: by default the mean reward of the image's other K - 1 samples; or the
  reward of the image's greedy caption (Rennie et al.'s "self-critical" baseline);
- loss = mean over the B*K samples of -(reward - b) * sum of log p(word) over its
  words, the end word included, nothing after it.

Why the other samples' mean is the default: it needs no extra greedy decoding, it is
independent of the sample it judges (so the gradient stays unbiased), and captioners
trained with it (Luo 2020, "A Better Variant of Self-Critical Sequence Training";
the ruotianluo/self-critical.pytorch framework's `new_self_critical`) reach a higher
CIDEr-D than with the greedy baseline. `--scst_baseline=greedy` gives the paper's.

Dropout is off in SCST, in sampling and in the loss alike: the log-probabilities
differentiated are those of the very distribution the captions were drawn from (the
loss runs the fused teacher-forced LSTM over the sampled words, `model.forward`).
The encoder is frozen and its features come from the phase-1 feature cache. The
optimizer is Adam (`--scst_learning_rate`, 5e-5 as Rennie et al.); a run resumes from
its own checkpoints (weights, Adam, data position, RNG states) like the other phases,
and its first step after a cross-entropy checkpoint starts a fresh optimizer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from showtell.config import TrainConfig
from showtell.data.dataset import Batch
from showtell.data.vocab import Vocabulary
from showtell.errors import ShowtellError
from showtell.evaluation.cider import (
    MAX_N,
    CiderD,
    DocumentFrequencies,
    Tokens,
    WordIds,
    count_ngrams,
    key_order,
)
from showtell.model import ShowAndTell
from showtell.training.features import FeatureCache

DF_FILE = "cider_df.npz"  # in the train_dir, beside the checkpoints


def cache_references(cache: FeatureCache, vocab: Vocabulary) -> list[list[str]]:
    """Each cached image's reference captions (in feature-row order) in the model's
    token space: the training captions' words without the start and end words, words
    outside the vocabulary as the unknown word (what the model can say)."""
    words = np.array([*vocab.words, vocab.unknown_word], dtype=object)
    references: list[list[str]] = [[] for _ in range(len(cache.image_ids))]
    offsets = cache.caption_offsets
    for pair, row in enumerate(cache.pair_rows):
        ids = cache.caption_ids[offsets[pair] + 1 : offsets[pair + 1] - 1]
        references[row].append(" ".join(words[ids]))
    return references


class SentenceBleu:
    """pycocoevalcap's sentence-level BLEU-4 (its BleuScorer with the closest reference
    length, as `Bleu(4)` reports per image), vectorised as `CiderD`: each image's
    largest reference count of every n-gram and its references' lengths are found
    once; a batch of captions (scorer word ids, as `CiderD.score_ids` takes) is then a
    few sorts, searchsorted and bincount."""

    TINY, SMALL = 1e-15, 1e-9  # pycocoevalcap's guards against dividing by zero

    def __init__(self, references: list[list[Tokens]], word_ids: WordIds) -> None:
        if any(len(refs) == 0 for refs in references):
            raise ShowtellError("BLEU-4: an image without reference captions")
        self.num_refs = np.array([len(r) for r in references], dtype=np.int64)
        self.first_ref = np.concatenate([[0], np.cumsum(self.num_refs)[:-1]])
        ids = word_ids.encode([c for refs in references for c in refs])
        self.ref_length = (ids != 0).sum(1)
        row, key, count = count_ngrams(ids)
        image = np.repeat(np.arange(len(references)), self.num_refs)[row]
        self.ref_keys = np.unique(key)
        join = image * len(self.ref_keys) + np.searchsorted(self.ref_keys, key)
        order = np.argsort(join, kind="stable")
        join, count = join[order], count[order]
        first = np.flatnonzero(np.r_[True, join[1:] != join[:-1]])
        self.join, self.max_count = join[first], np.maximum.reduceat(count, first)

    def score_ids(self, ids: np.ndarray, images: np.ndarray) -> np.ndarray:
        """BLEU-4 of each row of (M, T) word ids (0-padded) against its image's references."""
        ids, images = np.asarray(ids, dtype=np.uint64), np.asarray(images, dtype=np.int64)
        m = len(ids)
        row, key, count = count_ngrams(ids)
        pos = np.minimum(np.searchsorted(self.ref_keys, key), max(len(self.ref_keys) - 1, 0))
        join = images[row] * len(self.ref_keys) + pos
        at = np.minimum(np.searchsorted(self.join, join), len(self.join) - 1)
        found = (self.ref_keys[pos] == key) & (self.join[at] == join)
        clipped = np.minimum(count, np.where(found, self.max_count[at], 0))
        correct = np.bincount(
            row * MAX_N + key_order(key), clipped.astype(np.float64), minlength=m * MAX_N
        ).reshape(m, MAX_N)
        length = (ids != 0).sum(1)
        guess = np.maximum(length[:, None] - np.arange(MAX_N)[None, :], 0)
        bleu = np.ones(m)
        for n in range(MAX_N):
            bleu = bleu * (correct[:, n] + self.TINY) / (guess[:, n] + self.SMALL)
        bleu = bleu ** (1.0 / MAX_N)
        # The closest reference length, the shorter one on a tie.
        per = self.num_refs[images]
        caption = np.repeat(np.arange(m), per)
        offset = np.concatenate([[0], np.cumsum(per)[:-1]])
        ref = self.first_ref[images][caption] + np.arange(len(caption)) - offset[caption]
        span = int(self.ref_length.max()) + 1
        distance = np.abs(self.ref_length[ref] - length[caption])
        ref_length = np.minimum.reduceat(distance * span + self.ref_length[ref], offset) % span
        ratio = (length + self.TINY) / (ref_length + self.SMALL)
        with np.errstate(over="ignore", divide="ignore"):
            penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
        return bleu * penalty


class ImageRows:
    """The feature cache image by image, for `batches.CachedBatches`: each "pair" is
    one image. A batch holds the images' features and ids; no captions (SCST samples
    its own)."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache
        self.num_pairs = len(cache.image_ids)

    def batch(self, rows: np.ndarray) -> Batch:
        features = torch.from_numpy(self.cache.features[rows].astype(np.float32))
        empty = torch.zeros(len(rows), 0, dtype=torch.long)
        ids = torch.from_numpy(self.cache.image_ids[rows])
        return Batch(features, empty, empty, empty.int(), ids)


@torch.no_grad()
def sample_captions(
    model: ShowAndTell,
    features: torch.Tensor,
    start_id: int,
    end_id: int,
    max_length: int,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions drawn from the model's next-word distribution (or its most likely
    words): (M, D) features -> (M, L) words after the start word (0 after the end)
    and (M,) lengths, the end word counted where one was drawn. L <= max_length."""
    state = model.initial_state(features)
    m, device = len(features), features.device
    word = torch.full((m,), start_id, dtype=torch.long, device=device)
    words = torch.zeros(m, max_length, dtype=torch.long, device=device)
    lengths = torch.full((m,), max_length, dtype=torch.long, device=device)
    running = torch.ones(m, dtype=torch.bool, device=device)
    for t in range(max_length):
        log_probs, state = model.step(word, state)
        if greedy:
            word = log_probs.argmax(1)
        else:
            word = torch.multinomial(log_probs.float().exp(), 1)[:, 0]
        words[:, t] = torch.where(running, word, 0)
        ended = running & (word == end_id)
        lengths[ended] = t + 1
        running &= ~ended
        if not running.any():
            return words[:, : t + 1], lengths
    return words, lengths


class SelfCritical:
    """The SCST step's reward and loss, for one training run."""

    def __init__(
        self,
        model: ShowAndTell,
        cache: FeatureCache,
        vocab: Vocabulary,
        config: TrainConfig,
        train_dir: Path,
        write: bool = True,
    ) -> None:
        self.model, self.vocab, self.config = model, vocab, config
        self.references = cache_references(cache, vocab)
        path = Path(train_dir) / DF_FILE
        if path.is_file():
            df = DocumentFrequencies.load(path)
        else:
            df = DocumentFrequencies.from_references(self.references)
            if write:  # rank 0; written whole or not at all
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.stem}-{os.getpid()}.npz")
                df.save(partial)
                os.replace(partial, path)
        self.scorer = CiderD(self.references, df)
        self.table = self.scorer.word_table([*vocab.words, vocab.unknown_word])
        self.bleu = (
            SentenceBleu(self.references, self.scorer.word_ids)
            if config.scst_bleu_weight > 0
            else None
        )
        order = np.argsort(cache.image_ids)
        self._ids, self._rows = cache.image_ids[order], order
        self.stats: dict[str, float] = {}
        self.rewards_seen: np.ndarray = np.zeros(0)  # the last step's rewards (tests)

    def rows(self, image_ids: torch.Tensor) -> np.ndarray:
        """Feature rows (indices into `references`) of these image ids."""
        return self._rows[np.searchsorted(self._ids, image_ids.cpu().numpy())]

    def rewards(self, words: torch.Tensor, lengths: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """CIDEr-D (+ the BLEU-4 share) of each caption against its image's references."""
        words_np, lengths_np = words.cpu().numpy(), lengths.cpu().numpy()
        last = words_np[np.arange(len(words_np)), np.maximum(lengths_np - 1, 0)]
        said = lengths_np - (last == self.vocab.end_id)  # the words before the end word
        mask = np.arange(words_np.shape[1])[None, :] < said[:, None]
        ids = np.where(mask, self.table[words_np], 0)
        reward = self.scorer.score_ids(ids, rows)
        if self.bleu is not None:
            reward = reward + self.config.scst_bleu_weight * self.bleu.score_ids(ids, rows)
        return reward

    def loss(self, network: torch.nn.Module, batch: Batch) -> tuple[Batch, torch.Tensor]:
        """One step's policy-gradient loss for a batch of images (`ImageRows`); also
        returns the sampled captions as a Batch (logged as the captions of a step)."""
        model, config, k = self.model, self.config, self.config.scst_samples
        model.eval()  # no dropout: see the module's docstring
        assert isinstance(batch.images, torch.Tensor)
        features = batch.images.repeat_interleave(k, 0)  # (B*K, D)
        rows = self.rows(batch.image_ids)
        start, end = self.vocab.start_id, self.vocab.end_id
        words, lengths = sample_captions(
            model, features, start, end, config.scst_max_caption_length
        )
        reward = self.rewards(words, lengths, np.repeat(rows, k))
        if config.scst_baseline == "greedy":
            greedy = self.rewards(
                *sample_captions(
                    model, batch.images, start, end, config.scst_max_caption_length, greedy=True
                ),
                rows,
            )
            baseline = np.repeat(greedy, k)
            self.stats["greedy_reward"] = float(greedy.mean())
        else:  # the mean of the image's other samples' rewards
            per_image = reward.reshape(-1, k)
            baseline = ((per_image.sum(1, keepdims=True) - per_image) / (k - 1)).ravel()
        advantage = torch.from_numpy(reward - baseline).float().to(features.device)

        # -log p of each sampled word, the end word included, by teacher forcing.
        first = torch.full_like(words[:, :1], start)
        input_seqs = torch.cat([first, words[:, :-1]], 1)
        mask = torch.arange(words.shape[1], device=words.device)[None, :] < lengths[:, None]
        word_loss = network(input_seqs, words, mask, features=features, reduction="none")
        caption_of_word = mask.nonzero()[:, 0]  # row-major, as the loss's words
        loss = (advantage[caption_of_word] * word_loss).sum() / len(words)

        self.rewards_seen = reward
        self.stats.update(reward=float(reward.mean()), baseline=float(baseline.mean()))
        ids = batch.image_ids.repeat_interleave(k)
        return Batch(features, input_seqs, words, mask.int(), ids), loss
