"""Serving throughput: images/s under 1, 8 and 32 concurrent clients vs the offline
batched captioner, side by side in one run.

    python benchmarks/serve.py [--requests 96]

The model is untrained but of im2txt's decoder size (V = 12,000, LSTM 512, beam 3,
max length 20, so every caption runs all 19 steps) with the small CNN encoder at
64x64, so that decoding dominates as it does at scale. Each client sends one PNG
per request, one request after another, over real HTTP to `showtell serve` on
127.0.0.1 in its own process; the server's micro-batcher gathers what arrives
together.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

from showtell.checkpoint import save_checkpoint
from showtell.config import ImageConfig, ModelConfig
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.vocab import Vocabulary
from showtell.inference import Captioner
from showtell.model import ShowAndTell


def make_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    words = ["<S>", "</S>", *(f"w{i}" for i in range(11_997))]
    vocab = Vocabulary(words, [1] * len(words))
    config = ModelConfig(
        encoder="cnn_small",
        vocab_size=len(vocab),
        image=ImageConfig(resize_height=72, resize_width=72, height=64, width=64),
    )
    model = ShowAndTell(config)
    return save_checkpoint(directory, 1, model, config, vocab, {"global_step": 1}, {}, 1)


def png(i: int) -> bytes:
    image = Image.new("RGB", (64, 64), (i % 256, 80, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96, help="per concurrency level")
    parser.add_argument("--max_wait_ms", type=float, default=10.0, help="the server's batch wait")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    checkpoint = make_checkpoint(Path(tempfile.mkdtemp(prefix="showtell-serve-")))
    captioner = Captioner(checkpoint)
    images = [png(i) for i in range(args.requests)]

    preprocess = ImagePreprocessor(captioner.image_config, training=False)
    batch = torch.stack([preprocess(data) for data in images[:32]])
    captioner.caption_images(batch)  # warm-up
    start = time.perf_counter()
    captioner.caption_images(batch)
    offline = 32 / (time.perf_counter() - start)
    print(f"offline batched captioner (batch 32): {offline:,.1f} images/s")

    del captioner  # the server process loads its own copy
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "showtell",
            "serve",
            f"--checkpoint_path={checkpoint}",
            f"--port={port}",
            "--max_batch=32",
            f"--max_wait_ms={args.max_wait_ms}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.time() > deadline or server.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.2)
    url = f"http://127.0.0.1:{port}/v1/captions"

    async def load(clients: int) -> float:
        queue = list(range(args.requests))

        async def client(http: httpx.AsyncClient) -> None:
            while queue:
                i = queue.pop()
                response = await http.post(url, files=[("images", (f"{i}.png", images[i]))])
                response.raise_for_status()

        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as http:
            await http.post(url, files=[("images", ("w.png", images[0]))])  # warm-up
            start = time.perf_counter()
            await asyncio.gather(*(client(http) for _ in range(clients)))
            return args.requests / (time.perf_counter() - start)

    for clients in (1, 8, 32):
        rate = asyncio.run(load(clients))
        print(
            f"server, {clients:>2} concurrent clients: {rate:,.1f} images/s "
            f"= {rate / offline:.2f} x offline"
        )
    server.terminate()
    server.wait(timeout=60)


if __name__ == "__main__":
    main()
