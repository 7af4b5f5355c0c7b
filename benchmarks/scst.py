"""The whole SCST step (training/scst.py) and the share of it its reward takes.

    python benchmarks/scst.py [--images 16000] [--batch 64] [--samples 5] [--steps 5]

Data: the demo's training captions (synthetic scenes of up to 2 objects, 5 captions an
image, 2/3 of `--images` for training, tokenized as build-mscoco-data does), their
vocabulary, random stand-ins for the cached features. Model: the demo's decoder
(cpu-small: embeddings and LSTM 512, no dropout), random weights, fp32, with the end
word's logit raised so that sampled captions run ~10 words as the demo's do (a random
model never ends them; `--end_bias 0` gives that worst case of 20 words).

A step is what `showtell train --scst` runs: `SelfCritical.loss` (sample K captions
per image, reward them, baseline, teacher-forced log-probabilities of the samples),
then backward, global-norm clip and Adam. The reward (CIDEr-D, document frequencies
of all the training references, + BLEU-4 where mixed in) is timed inside the step.
Baselines: the mean of the other samples (the default) and the greedy caption (one
more decoding of B captions), and the greedy one with a BLEU-4 share of 0.5.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from showtell.config import ModelConfig, TrainConfig
from showtell.data.tokenize import tokenize_caption
from showtell.data.vocab import Vocabulary
from showtell.demo.synthetic import make_caption, sample_scene
from showtell.model import ShowAndTell
from showtell.training.features import FeatureCache
from showtell.training.scst import ImageRows, SelfCritical


def demo_cache(
    images: int, feature_dim: int, rng: random.Random
) -> tuple[FeatureCache, Vocabulary]:
    """A feature cache of the demo's training captions (in memory) and their vocabulary."""
    scenes = [sample_scene(rng, 2) for _ in range(images * 2 // 3)]
    captions = [
        ["<S>", *tokenize_caption(make_caption(s, rng)), "</S>"] for s in scenes for _ in range(5)
    ]
    vocab = Vocabulary.build(captions, min_word_count=4)
    ids = [vocab.encode(c) for c in captions]
    cache = FeatureCache(
        Path("in-memory"),
        np.random.default_rng(0).standard_normal((len(scenes), feature_dim)).astype(np.float16),
        np.arange(len(scenes), dtype=np.int64),
        np.repeat(np.arange(len(scenes), dtype=np.int64), 5),
        np.concatenate([[0], np.cumsum([len(c) for c in ids])]).astype(np.int64),
        np.concatenate(ids).astype(np.int64),
    )
    return cache, vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16000, help="the demo's data set size")
    parser.add_argument("--batch", type=int, default=64, help="images per SCST step")
    parser.add_argument("--samples", type=int, default=5, help="sampled captions per image")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--end_bias", type=float, default=math.log(5.0))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    rng = random.Random(0)
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, numpy {np.__version__}, fp32")

    start = time.perf_counter()
    probe = ShowAndTell(ModelConfig(encoder="cnn_small", vocab_size=10))
    cache, vocab = demo_cache(args.images, probe.encoder.output_dim, rng)
    print(
        f"{len(cache.image_ids):,} training images, {cache.num_pairs:,} references, "
        f"vocabulary {len(vocab)} ({time.perf_counter() - start:.1f} s)"
    )
    config = ModelConfig(
        encoder="cnn_small",
        embedding_size=512,
        num_lstm_units=512,
        lstm_dropout_keep_prob=1.0,
        vocab_size=len(vocab),
    )
    base = replace(
        TrainConfig(), scst=True, scst_samples=args.samples, scst_learning_rate=0.0
    )  # rate 0: every step samples from the same model
    settings = {
        "mean of the other samples (default)": base,
        "greedy caption": replace(base, scst_baseline="greedy"),
        "greedy caption, + 0.5 x BLEU-4": replace(
            base, scst_baseline="greedy", scst_bleu_weight=0.5
        ),
    }
    rows = ImageRows(cache)
    for name, train_config in settings.items():
        model = ShowAndTell(config)
        with torch.no_grad():
            model.logits.bias[vocab.end_id] += args.end_bias
        with tempfile.TemporaryDirectory() as train_dir:
            start = time.perf_counter()
            scst = SelfCritical(model, cache, vocab, train_config, Path(train_dir))
            setup = time.perf_counter() - start
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=0.0)
        reward_seconds: list[float] = []
        rewards = scst.rewards

        def timed_rewards(*a, _rewards=rewards, _seen=reward_seconds):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            out = _rewards(*a)
            _seen.append(time.perf_counter() - t)
            return out

        scst.rewards = timed_rewards  # type: ignore[method-assign]
        steps, rewards_per_step, lengths = [], [], []
        for i in range(args.steps + 1):  # the first is a warm-up
            batch = rows.batch(np.sort(rng.sample(range(rows.num_pairs), args.batch)))
            reward_seconds.clear()
            t = time.perf_counter()
            sampled, loss = scst.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            if i:
                steps.append(time.perf_counter() - t)
                rewards_per_step.append(sum(reward_seconds))
                lengths.append(float(sampled.mask.sum(1).float().mean()))
        step, reward = statistics.median(steps), statistics.median(rewards_per_step)
        captions = args.batch * args.samples
        print(
            f"{name}: set-up {setup:.2f} s; step {step * 1e3:,.0f} ms, "
            f"{captions / step:,.0f} sampled captions/s; reward {reward * 1e3:.1f} ms "
            f"({reward / step:.1%} of the step); mean sampled length {np.mean(lengths):.1f}"
        )


if __name__ == "__main__":
    main()
