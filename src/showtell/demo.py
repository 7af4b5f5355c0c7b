"""`showtell demo` (what `make demo` runs): the pipeline on built-in synthetic data.

Everything goes under one folder; a second run reuses what is already there.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from showtell.data.build import DATASET_JSON, BuildConfig, build_mscoco, format_summary
from showtell.data.show_records import print_records
from showtell.data.synthetic import SyntheticConfig, make_synthetic

DEMO_SEED = 1234


def run_demo(output_dir: Path, num_images: int = 5000) -> None:
    start = time.perf_counter()
    synthetic_dir = output_dir / "synthetic"
    records_dir = output_dir / "records"
    config = SyntheticConfig(num_images=num_images, seed=DEMO_SEED, val_fraction=0.33)

    attributes = synthetic_dir / "annotations" / "attributes.json"
    made = attributes.is_file() and json.loads(attributes.read_text())["config"] == asdict(config)
    if made:
        print(f"[1/2] synthetic data set: reusing {synthetic_dir}")
    else:
        print(f"[1/2] synthetic data set: drawing {num_images:,} scenes into {synthetic_dir}")
        s = make_synthetic(synthetic_dir, config)
        print(f"      {s['images']:,} images in {s['seconds']:.1f} s")

    dataset_json = records_dir / DATASET_JSON
    if dataset_json.is_file() and made:
        print(f"[2/2] records: reusing {records_dir}")
        info = json.loads(dataset_json.read_text())
        print(format_summary(info))
    else:
        print(f"[2/2] records: building im2txt shards into {records_dir}")
        info = build_mscoco(
            synthetic_dir / "annotations" / "captions_train.json",
            synthetic_dir / "train",
            synthetic_dir / "annotations" / "captions_val.json",
            synthetic_dir / "val",
            BuildConfig(output_dir=records_dir, train_shards=8, val_shards=2, test_shards=2),
        )
    print("\nFirst records of the test split:")
    print_records(str(records_dir / "test-*"), limit=2, as_json=False, out=sys.stdout)
    splits = info["splits"]
    print(
        "demo data: "
        + ", ".join(f"{k} {v['images']:,} images / {v['pairs']:,} pairs" for k, v in splits.items())
        + f"; vocabulary {info['vocabulary']['size']} ids"
        + f"; {time.perf_counter() - start:.1f} s"
    )
