"""Scheduled sampling's cost per training step against teacher forcing, side by side.

    python benchmarks/scheduled_sampling.py [--rounds 5] [--steps 4] [--batch_size 32]
                                            [--caption_words 12] [--vocab 12000]

The real phase-1 step (forward, backward, global-norm clip, SGD on cached features)
at im2txt's decoder sizes (embeddings and LSTM 512, V = 12,000, batch 32, captions of
~12 words; benchmarks/train.py's batches), under each setting:
- teacher forcing: the fused LSTM over the whole caption (im2txt's; probability 0);
- step by step, nothing sampled (probability 1e-9): the price of the LSTM run one
  word at a time, which scheduled sampling needs;
- probability 0.05, 0.25, 1.0: plus the logits and a multinomial draw for the words
  that are sampled (only for those).
Rounds interleave the settings (each round runs every setting `--steps` times), so
that a noisy machine slows them alike; the medians over rounds are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from showtell.config import ModelConfig
from showtell.model import ShowAndTell
from train import make_batch  # benchmarks/train.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="steps per setting per round")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--caption_words", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=12000)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    print(
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, fp32; batch "
        f"{args.batch_size}, ~{args.caption_words} words, V={args.vocab}, LSTM 512"
    )
    # The decoder is what differs; a small encoder keeps start-up quick (features are
    # given, as in phase 1 with the feature cache).
    model = ShowAndTell(ModelConfig(encoder="cnn_small", vocab_size=args.vocab)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # no change: every step alike
    inputs, targets, mask = make_batch(
        args.batch_size, args.caption_words, args.vocab, torch.device("cpu"), seed=0
    )
    features = torch.randn(args.batch_size, model.encoder.output_dim)

    def step(probability: float) -> None:
        loss = model(inputs, targets, mask, features=features, sampling_probability=probability)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()

    settings = {
        "teacher forcing (probability 0)": 0.0,
        "step by step, nothing sampled (1e-9)": 1e-9,
        "scheduled sampling, probability 0.05": 0.05,
        "scheduled sampling, probability 0.25": 0.25,
        "scheduled sampling, probability 1.0": 1.0,
    }
    for probability in settings.values():  # warm-up
        step(probability)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, probability in settings.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(probability)
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["teacher forcing (probability 0)"])
    for name, values in times.items():
        ms = statistics.median(values)
        print(
            f"{name:>40}: {ms * 1e3:8.1f} ms/step, {args.batch_size / ms:8.1f} captions/s, "
            f"{ms / base:5.2f}x teacher forcing"
        )


if __name__ == "__main__":
    main()
