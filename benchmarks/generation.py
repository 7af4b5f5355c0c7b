"""Beam search speed: batched over images vs one image at a time, side by side.

    python benchmarks/generation.py [--images 64] [--device cpu|cuda]

im2txt's sizes: V = 12,000, LSTM 512, beam 3, max caption length 20, an untrained
model (it rarely emits </S>, so every image runs all 19 steps: the worst case).
The encoder is left out: both paths start from the same initial states.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from showtell.config import ModelConfig
from showtell.generation import beam_search
from showtell.model import ShowAndTell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = ShowAndTell(ModelConfig(vocab_size=12000)).to(device).eval()
    with torch.no_grad():
        state = model.initial_state(torch.randn(args.images, 2048, device=device))

    def batched() -> None:
        beam_search(model.step, state, 0, 1)

    def one_at_a_time() -> None:
        for i in range(args.images):
            beam_search(model.step, tuple(s[i : i + 1] for s in state), 0, 1)

    rates = {}
    for name, run in (("batched", batched), ("one image at a time", one_at_a_time)):
        run()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = args.images / (time.perf_counter() - start)
        print(f"{name:>20}: {rates[name]:,.1f} images/s")
    print(f"ratio: {rates['batched'] / rates['one image at a time']:,.1f}x ({device})")


if __name__ == "__main__":
    main()
