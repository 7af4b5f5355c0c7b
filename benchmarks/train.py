"""Phase-1 training speed: cached features vs the encoder run every step, side by side.

    python benchmarks/train.py [--steps 20] [--batch_size 32] [--device cpu|cuda]
                               [--bf16] [--caption_words 12]

Both paths time the trainer's own step (`showtell.training.step.TrainStep`: forward,
backward, global-norm clip, SGD), as `showtell train` runs it, at im2txt's sizes:
Inception v3 at 299x299, V = 12,000, LSTM 512, batch 32, captions of ~12 words
(+ <S>/</S>; lengths vary by +-3 as real captions do). The "encoder every step" path
adds the frozen Inception v3 forward pass on the batch's images (already decoded, in
memory: the loader runs in parallel and was measured in prepare.py), as phase 1 with
`--no-feature-cache` does. The decoder's achieved GFLOP/s counts the matmul work of
the training step (forward + backward = 3 x forward FLOPs: image embedding, the LSTM
over every position, logits over real words only) against a measured fp32 (or bf16)
matmul peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from showtell.config import ModelConfig, TrainConfig
from showtell.data.dataset import Batch
from showtell.device import precision_context
from showtell.model import ShowAndTell
from showtell.training.step import Phase, TrainStep


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(4 if device.type == "cpu" else 50):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / (4 if device.type == "cpu" else 50))
    return 2 * n**3 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(batch: int, words: int, vocab: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(words - 3, words + 4, (batch,), generator=g) + 1  # inputs incl. <S>
    t = int(lengths.max())
    seqs = torch.randint(0, vocab, (batch, t), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).int()
    return seqs.to(device), seqs.roll(-1, 1).to(device), mask.to(device)


def decoder_step_flops(config: ModelConfig, batch: int, seq_len: int, real: int) -> float:
    d, e, h, v = 2048, config.embedding_size, config.num_lstm_units, config.vocab_size
    forward = 2 * batch * d * e  # image embedding
    forward += 2 * batch * (seq_len + 1) * 4 * h * (e + h)  # LSTM: image step + every position
    forward += 2 * real * h * v  # logits on real words only
    return 3.0 * forward


def time_steps(step, steps: int, device: torch.device) -> float:
    step()  # warm-up
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoder_steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--caption_words", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--skip_encoder", action="store_true", help="cached path only")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{os.cpu_count()} CPU cores"
    )
    print(
        f"device: {name}; torch {torch.__version__}; batch {args.batch_size}, "
        f"~{args.caption_words} words, V=12000, bf16={args.bf16}"
    )

    config = ModelConfig(vocab_size=12000)
    model = ShowAndTell(config).to(device)
    settings = TrainConfig()  # im2txt's: SGD, learning rate 2.0, clipping at norm 5
    cached_phase = Phase.from_config(settings)  # phase 1 on cached features
    model.set_train_encoder(cached_phase.train_encoder)
    model.train()
    lr = cached_phase.learning_rate(0, settings, steps_per_epoch=1e9)
    optimizer = cached_phase.optimizer_for(model, lr)
    autocast = precision_context(device, torch.bfloat16 if args.bf16 else torch.float32)
    input_seqs, target_seqs, mask = make_batch(
        args.batch_size, args.caption_words, 12000, device, seed=0
    )
    ids = torch.arange(args.batch_size, device=device)
    features = torch.randn(args.batch_size, 2048, device=device)
    images = torch.rand(args.batch_size, 3, 299, 299, device=device) * 2 - 1
    cached_batch = Batch(features, input_seqs, target_seqs, mask, ids)
    image_batch = Batch(images, input_seqs, target_seqs, mask, ids)

    def step_of(phase: Phase) -> TrainStep:
        return TrainStep(model, optimizer, phase, settings.clip_gradients, autocast=autocast)

    cached_step, encoder_step = (
        step_of(cached_phase),
        step_of(dataclasses.replace(cached_phase, cached_features=False)),
    )

    def cached_step_fn() -> None:
        cached_step(cached_batch, lr)

    def encoder_step_fn() -> None:
        encoder_step(image_batch, lr)

    cached = time_steps(cached_step_fn, args.steps, device)
    cached_rate = args.batch_size / cached
    print(
        f"phase 1, cached features:     {cached_rate:,.1f} captions/s ({cached * 1e3:.1f} ms/step)"
    )
    if not args.skip_encoder:
        encoder = time_steps(encoder_step_fn, args.encoder_steps, device)
        encoder_rate = args.batch_size / encoder
        print(
            f"phase 1, encoder every step:  {encoder_rate:,.1f} captions/s "
            f"({encoder * 1e3:.1f} ms/step)"
        )
        print(f"ratio cached / encoder every step: {cached_rate / encoder_rate:,.1f}x")

    flops = decoder_step_flops(config, args.batch_size, input_seqs.shape[1], int(mask.sum()))
    achieved = flops / cached / 1e9
    peak = matmul_peak_gflops(device, torch.bfloat16 if args.bf16 else torch.float32)
    print(
        f"decoder training step: {achieved:,.1f} GFLOP/s of a measured "
        f"{'bf16' if args.bf16 else 'fp32'} matmul peak of {peak:,.1f} GFLOP/s "
        f"= {achieved / peak:.0%}"
    )


if __name__ == "__main__":
    main()
