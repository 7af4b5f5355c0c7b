"""Self-critical sequence training on the tiny model: its reward against pycocoevalcap's
CIDEr-D (and BLEU-4), its loss against the policy gradient written out, a run that
raises the training images' greedy CIDEr-D, and resuming."""

from __future__ import annotations

import dataclasses
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from safetensors.torch import load_file

from conftest import TINY_MODEL, tiny_train_config
from showtell.checkpoint import MODEL_FILE, load_checkpoint
from showtell.config import TrainConfig
from showtell.data.records import expand_file_patterns, read_caption_records
from showtell.errors import ShowtellError
from showtell.evaluation.cider import WordIds
from showtell.generation import beam_search
from showtell.model import ShowAndTell
from showtell.training.features import FeatureCache, build_feature_cache
from showtell.training.scst import DF_FILE, ImageRows, SelfCritical, SentenceBleu
from showtell.training.train import train
from test_cider_reward import WORDS, caption, corpus, official_scores


def record_references(records: Path, vocab) -> dict[int, list[str]]:
    """Image id -> its reference captions, read from the shards themselves (not the
    feature cache), words outside the vocabulary as its unknown word."""
    references: dict[int, list[str]] = defaultdict(list)
    for path in expand_file_patterns(str(records / "train-*")):
        for record in read_caption_records(path):
            words = vocab.decode(vocab.encode(record.caption[1:-1]))
            references[record.image_id].append(" ".join(words))
    return references


def load(train_dir: Path, records: Path) -> tuple[ShowAndTell, FeatureCache, object]:
    checkpoint = load_checkpoint(train_dir)
    model = ShowAndTell(checkpoint.model_config)
    model.load_state_dict(checkpoint.model_state())
    files = expand_file_patterns(str(records / "train-*"))
    cache = build_feature_cache(
        files,
        model.encoder,
        checkpoint.model_config.image,
        records.parent / "feature-cache",
        torch.device("cpu"),
        0,
    )
    return model.eval(), cache, checkpoint.vocab


def text(words: torch.Tensor, mask: torch.Tensor, end_id: int, vocab) -> list[str]:
    """The sampled captions of a Batch as text, without the end word."""
    out = []
    for row, m in zip(words.tolist(), mask.tolist(), strict=True):
        row = [w for w, keep in zip(row, m, strict=True) if keep]
        out.append(" ".join(vocab.decode(row[:-1] if row and row[-1] == end_id else row)))
    return out


def test_reward_and_loss_are_cider_d_and_the_policy_gradient(
    synthetic_records: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    model, cache, vocab = load(tiny_checkpoint, synthetic_records)
    references = record_references(synthetic_records, vocab)
    training = [references[int(i)] for i in cache.image_ids]  # every training image
    config = dataclasses.replace(TrainConfig(), scst=True, scst_samples=4)
    scst = SelfCritical(model, cache, vocab, config, tmp_path)
    assert (tmp_path / DF_FILE).is_file()
    batch = ImageRows(cache).batch(np.arange(5, 21))
    torch.manual_seed(0)
    sampled, loss = scst.loss(model, batch)

    # The reward: pycocoevalcap's CiderScorer, df from all training references.
    candidates = text(sampled.target_seqs, sampled.mask, vocab.end_id, vocab)
    refs = [references[int(i)] for i in sampled.image_ids]
    expected = official_scores(candidates, refs, training)
    np.testing.assert_allclose(scst.rewards_seen, expected, rtol=1e-9, atol=1e-6)
    assert expected.max() > 0 and len(set(candidates)) > 10

    # The loss: -(reward - mean of the image's other rewards) * sum log p, averaged.
    reward = torch.from_numpy(expected).view(16, 4)
    baseline = (reward.sum(1, keepdim=True) - reward) / 3
    with torch.no_grad():
        log_probs = model.log_probs(sampled.images, sampled.input_seqs)
    picked = log_probs.gather(2, sampled.target_seqs.unsqueeze(2))[:, :, 0]
    log_p = (picked * sampled.mask).sum(1).double()
    want = (-(reward - baseline).flatten() * log_p).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)

    # The greedy baseline with a BLEU-4 share: CIDEr-D + 0.5 x pycocoevalcap's BLEU-4.
    mixed = dataclasses.replace(config, scst_baseline="greedy", scst_bleu_weight=0.5)
    scst = SelfCritical(model, cache, vocab, mixed, tmp_path)  # loads the saved df
    torch.manual_seed(1)
    sampled, _ = scst.loss(model, batch)
    candidates = text(sampled.target_seqs, sampled.mask, vocab.end_id, vocab)
    refs = [references[int(i)] for i in sampled.image_ids]
    _, bleu = Bleu(4).compute_score(
        {i: r for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(candidates)}, verbose=0
    )
    expected = official_scores(candidates, refs, training) + 0.5 * np.array(bleu[3])
    np.testing.assert_allclose(scst.rewards_seen, expected, rtol=1e-9, atol=1e-6)
    assert "greedy_reward" in scst.stats


def test_sentence_bleu_4_is_pycocoevalcaps() -> None:
    references = corpus(7, 120)  # 1-6 references an image, empty ones included
    rng = random.Random(8)
    images = np.repeat(np.arange(120), 3)
    candidates = [caption(rng, [*WORDS, "zebra"]) for _ in images]
    image = next(i for i, refs in enumerate(references) if len(refs[0].split()) >= 6)
    candidates[3 * image] = references[image][0]  # a perfect match: BLEU-4 1
    word_ids = WordIds()
    got = SentenceBleu(references, word_ids).score_ids(word_ids.encode(candidates), images)
    _, expected = Bleu(4).compute_score(
        {i: references[k] for i, k in enumerate(images)},
        {i: [c] for i, c in enumerate(candidates)},
        verbose=0,
    )
    np.testing.assert_allclose(got, expected[3], rtol=1e-9, atol=1e-12)
    assert max(expected[3]) == pytest.approx(1.0) and min(expected[3]) == 0


def greedy_cider(train_dir: Path, records: Path) -> float:
    """The official CIDEr-D (pycocoevalcap's Cider) of the model's greedy captions
    (a beam of one) of every training image."""
    model, cache, vocab = load(train_dir, records)
    references = record_references(records, vocab)
    features = torch.from_numpy(cache.features[:].astype(np.float32))
    with torch.no_grad():
        beams = beam_search(
            model.step, model.initial_state(features), vocab.start_id, vocab.end_id, beam_size=1
        )
    captions = {
        int(i): [" ".join(vocab.decode(beam[0].tokens[1:-1]))]
        for i, beam in zip(cache.image_ids, beams, strict=True)
    }
    score, _ = Cider().compute_score({i: references[i] for i in captions}, captions)
    return float(score)


@pytest.mark.slow
def test_scst_raises_greedy_cider_d_and_resumes_exactly(
    synthetic_records: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    def run(name: str, steps: int) -> Path:
        config = tiny_train_config(
            synthetic_records, tmp_path / name, steps, scst=True, scst_learning_rate=2e-3
        )
        return Path(train(config, TINY_MODEL)["checkpoint"])

    for name in ("straight", "resumed"):
        shutil.copytree(tiny_checkpoint, tmp_path / name)
    straight = run("straight", 260)
    run("resumed", 230)
    resumed = run("resumed", 260)
    a, b = load_file(straight / MODEL_FILE), load_file(resumed / MODEL_FILE)
    for key, value in a.items():
        assert torch.equal(b[key], value), key
    state = load_checkpoint(straight).train_state()
    assert state["scst"] is True and "optimizer" in state

    before = greedy_cider(tiny_checkpoint, synthetic_records)
    after = greedy_cider(tmp_path / "straight", synthetic_records)
    assert after > 1.1 * before, (before, after)  # 0.198 -> 0.245 when written


def test_settings_that_cannot_work_are_one_line() -> None:
    scst = dataclasses.replace(TrainConfig(), scst=True)
    for changes, message in (
        ({"scst_baseline": "best"}, "--scst_baseline best: use one of mean, greedy"),
        ({"scst_samples": 1}, "--scst_samples 1: the mean baseline needs at least 2"),
        ({"train_inception": True}, "--train_inception=false"),
        ({"scst_max_caption_length": 0}, "--scst_max_caption_length 0: give 1 or more"),
        ({"scst_bleu_weight": -1.0}, "--scst_bleu_weight -1.0: give 0 or more"),
    ):
        with pytest.raises(ShowtellError, match=message):
            dataclasses.replace(scst, **changes)
    dataclasses.replace(scst, scst_baseline="greedy", scst_samples=1)
