"""Data preparation and loading speed on this machine, measured side by side.

    python benchmarks/prepare.py [--images 20000] [--workdir DIR]

1. make-synthetic: images/s.
2. build-mscoco-data on it (a subprocess, as a user runs it): images/s and pairs/s,
   and the peak resident memory of its whole process tree (sampled from /proc).
3. The training loader (random 299 crops of 346x346, flips, colour distortions) with
   2 DataLoader workers: decoded images/s, on the synthetic 64x64 JPEGs and on
   COCO-sized 640x480 JPEGs; beside it, Inception v3's forward pass at 299x299
   (batch 32, no gradients) in the same run: the ratio says whether the loader can
   keep a CPU training run fed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torchvision

from showtell.config import ImageConfig
from showtell.data.dataset import CaptionDataset, make_loader
from showtell.demo.synthetic import SyntheticConfig, make_synthetic


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_measuring_rss(command: list[str]) -> tuple[float, int]:
    """Runs a command; returns (seconds, peak RSS of its process tree in bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = process.wait()
    done.set()
    sampler.join()
    if code:
        raise SystemExit(f"{' '.join(command)} failed with exit status {code}")
    return time.perf_counter() - start, peak


def loader_images_per_second(pattern: str, batches: int, workers: int = 2) -> float:
    dataset = CaptionDataset(pattern, ImageConfig(), training=True)
    loader = make_loader(dataset, batch_size=32, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(iterator))
    return images / (time.perf_counter() - start)


def inception_images_per_second(batches: int = 2) -> float:
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False
    ).eval()
    x = torch.randn(32, 3, 299, 299)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
    return 32 * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--loader_batches", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="showtell-bench-"))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; workdir {workdir}")

    synthetic = make_synthetic(workdir / "synthetic", SyntheticConfig(num_images=args.images))
    print(
        f"make-synthetic: {synthetic['images_per_second']:,.0f} images/s "
        f"({args.images:,} images in {synthetic['seconds']:.1f} s)"
    )

    s = workdir / "synthetic"
    build = [
        sys.executable,
        "-m",
        "showtell",
        "build-mscoco-data",
        f"--train_image_dir={s / 'train'}",
        f"--val_image_dir={s / 'val'}",
        f"--train_captions_file={s / 'annotations' / 'captions_train.json'}",
        f"--val_captions_file={s / 'annotations' / 'captions_val.json'}",
        f"--output_dir={workdir / 'records'}",
        "--train_shards=16",
        "--val_shards=2",
        "--test_shards=2",
    ]
    seconds, peak = run_measuring_rss(build)
    info = json.loads((workdir / "records" / "dataset.json").read_text())
    pairs = sum(v["pairs"] for v in info["splits"].values())
    print(
        f"build-mscoco-data: {args.images / seconds:,.0f} images/s, {pairs / seconds:,.0f} "
        f"pairs/s ({seconds:.1f} s); peak RSS of the process tree "
        f"{peak / 2**20:,.0f} MiB"
    )

    coco_like = workdir / "coco-like"
    make_synthetic(coco_like, SyntheticConfig(num_images=400, image_size=640, val_fraction=0.5))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "showtell",
            "build-mscoco-data",
            f"--train_image_dir={coco_like / 'train'}",
            f"--val_image_dir={coco_like / 'val'}",
            f"--train_captions_file={coco_like / 'annotations' / 'captions_train.json'}",
            f"--val_captions_file={coco_like / 'annotations' / 'captions_val.json'}",
            f"--output_dir={coco_like / 'records'}",
            "--train_shards=2",
            "--val_shards=1",
            "--test_shards=1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    small = loader_images_per_second(str(workdir / "records" / "train-*"), args.loader_batches)
    large = loader_images_per_second(str(coco_like / "records" / "train-*"), args.loader_batches)
    encoder = inception_images_per_second()
    print(
        f"loader, 2 workers, 299x299 training crops: {small:,.0f} images/s from 64x64 "
        f"JPEGs, {large:,.0f} images/s from 640x640 JPEGs"
    )
    print(f"Inception v3 forward (299x299, batch 32, no grad): {encoder:,.1f} images/s")
    print(
        f"ratio loader / encoder: {small / encoder:,.1f}x (64 px), {large / encoder:,.1f}x (640 px)"
    )


if __name__ == "__main__":
    main()
