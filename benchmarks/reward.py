"""The CIDEr-D reward's speed beside the decoder's, at the demo's sizes (cpu-small).

    python benchmarks/reward.py [--images 16000] [--batch 64] [--samples 5]

Data: the demo's synthetic captions (up to 2 objects, 5 captions an image, the
official tokenization), document frequencies from the training split's references.
An SCST step at the preset's batch (64 images) with K samples per image scores
64 * K sampled captions and 64 greedy ones against each image's references, samples
the captions (model.step, no gradients), decodes the greedy ones, and runs the policy
gradient's forward and backward on the sampled captions (cached features, fp32).
Each part is timed alone (median of `--repeat` runs) and reported in captions/s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from showtell.config import ModelConfig, load_preset, preset_section
from showtell.data.vocab import Vocabulary
from showtell.demo.synthetic import make_caption, sample_scene
from showtell.evaluation.cider import CiderD, DocumentFrequencies
from showtell.evaluation.ptb_tokenizer import tokenize
from showtell.model import ShowAndTell


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16000, help="the demo's data set size")
    parser.add_argument("--batch", type=int, default=64, help="images per SCST step")
    parser.add_argument("--samples", type=int, default=5, help="sampled captions per image")
    parser.add_argument("--max_length", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rng = random.Random(0)

    # The demo's captions: 2/3 of the images train (make-synthetic's split).
    scenes = [sample_scene(rng, 2) for _ in range(args.images * 2 // 3)]
    raw = {i: [make_caption(s, rng) for _ in range(5)] for i, s in enumerate(scenes)}
    start = time.perf_counter()
    references = [refs for _, refs in sorted(tokenize(raw).items())]
    print(
        f"{len(references):,} training images, {5 * len(references):,} references "
        f"(tokenized in {time.perf_counter() - start:.1f} s)"
    )

    start = time.perf_counter()
    df = DocumentFrequencies.from_references(references)
    df_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "df.npz"
        df.save(path)
        size = path.stat().st_size
        start = time.perf_counter()
        df = DocumentFrequencies.load(path)
        load_s = time.perf_counter() - start
    start = time.perf_counter()
    scorer = CiderD(references, df)
    setup_s = time.perf_counter() - start
    print(
        f"document frequencies: {len(df.keys):,} n-grams in {df_s:.2f} s; file {size:,} "
        f"bytes, loaded in {load_s * 1000:.0f} ms; reference vectors in {setup_s:.2f} s"
    )

    # A batch: K fresh paraphrases of each image's scene (what a trained model samples),
    # as a model's token ids through the scorer's word table.
    vocab = Vocabulary.build([c.split() for refs in references for c in refs], min_word_count=4)
    table = scorer.word_table(vocab.words)
    images = np.repeat(rng.sample(range(len(references)), args.batch), args.samples)
    sampled = [
        r[0]
        for r in tokenize(
            {i: [make_caption(scenes[k], rng)] for i, k in enumerate(images)}
        ).values()
    ]
    ids = np.zeros((len(sampled), args.max_length), dtype=np.int64)
    for row, caption in enumerate(sampled):
        words = vocab.encode(caption.split())[: args.max_length]
        ids[row, : len(words)] = words
    mask = (
        np.arange(args.max_length)[None, :] < np.array([len(c.split()) for c in sampled])[:, None]
    )
    n = len(sampled) + args.batch  # K samples and one greedy caption per image
    reward_s = timed(lambda: scorer.score_ids(np.where(mask, table[ids], 0), images), args.repeat)
    reward_s *= n / len(sampled)
    text_s = timed(lambda: scorer.score(sampled, images), args.repeat) * n / len(sampled)
    mean_length = float(mask.sum(1).mean())

    # The decoder at the preset's sizes.
    preset = load_preset("cpu-small")
    config = preset_section(preset, ModelConfig, "model", "cpu-small")
    config = ModelConfig(**{**config.__dict__, "vocab_size": len(vocab)})
    model = ShowAndTell(config)
    features = torch.randn(args.batch, model.encoder.output_dim)
    generator = torch.Generator().manual_seed(0)

    def sample(k: int) -> None:  # k captions per image, full length (the worst case)
        with torch.no_grad():
            h, c = model.initial_state(features.repeat_interleave(k, 0))
            tokens = torch.full((len(h),), vocab.start_id)
            for _ in range(args.max_length):
                log_probs, (h, c) = model.step(tokens, (h, c))
                if k == 1:
                    tokens = log_probs.argmax(1)
                else:
                    tokens = torch.multinomial(log_probs.exp(), 1, generator=generator)[:, 0]

    length = round(mean_length) + 1  # the sampled words and the end word
    inputs = torch.randint(len(vocab), (len(sampled), length), generator=generator)
    targets = torch.randint(len(vocab), (len(sampled), length), generator=generator)
    step_mask = torch.ones(len(sampled), length)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def train_step() -> None:  # the policy gradient's forward and backward
        model.train()
        optimizer.zero_grad()
        loss = model(
            inputs,
            targets,
            step_mask,
            features=features.repeat_interleave(args.samples, 0),
            reduction="sum",
        )
        loss.backward()
        optimizer.step()

    sample_s = timed(lambda: sample(args.samples), args.repeat)
    greedy_s = timed(lambda: sample(1), args.repeat)
    train_s = timed(train_step, args.repeat)
    total = reward_s + sample_s + greedy_s + train_s
    k = len(sampled)
    print(
        f"SCST step: {args.batch} images x {args.samples} samples + greedy, vocabulary "
        f"{len(vocab)}, LSTM {config.num_lstm_units}, mean sampled length {mean_length:.1f}"
    )
    rows = [
        (f"reward, CIDEr-D of {n} captions (token ids)", n, reward_s),
        (f"reward, CIDEr-D of {n} captions (text)", n, text_s),
        (f"sampling {k} captions ({args.max_length} steps)", k, sample_s),
        (f"greedy decoding {args.batch} captions", args.batch, greedy_s),
        (f"forward + backward on {k} captions", k, train_s),
    ]
    for name, count, seconds in rows:
        print(f"{name:>45}: {count / seconds:>12,.0f} captions/s ({seconds * 1000:7.2f} ms)")
    print(f"reward share of the SCST step: {reward_s / total:.1%} (step {total * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
