"""Data commands: make-synthetic, download-and-preprocess-mscoco, build-mscoco-data,
show-records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from showtell.cli.flags import add_dataclass_flags, add_flag, given_flags, positive_int
from showtell.config.merge import FLAGS, resolve
from showtell.errors import ShowtellError

# --- build-mscoco-data ------------------------------------------------------------------


def _add_build_flags(parser: argparse.ArgumentParser) -> None:
    from showtell.data.build import BuildConfig

    title = "records (as the seed's build_mscoco_data)"
    add_dataclass_flags(parser, BuildConfig, "build.", skip=("output_dir",), title=title)


def _build_config(args: argparse.Namespace, output_dir: Path) -> Any:
    from showtell.data.build import BuildConfig

    given = {**given_flags(args, "build."), "output_dir": output_dir}
    return resolve(BuildConfig, (FLAGS, given))


def _cmd_build(args: argparse.Namespace) -> int:
    from showtell.data.build import build_coco_file, build_karpathy, build_mscoco

    if args.output_dir is None:
        raise ShowtellError("build-mscoco-data needs --output_dir")
    config = _build_config(args, args.output_dir)
    mscoco = [
        args.train_image_dir,
        args.val_image_dir,
        args.train_captions_file,
        args.val_captions_file,
    ]
    sources = [
        any(x is not None for x in mscoco),
        args.karpathy_split_file is not None,
        args.captions_file is not None,
    ]
    if sum(sources) != 1:
        raise ShowtellError(
            "give one source: the four MSCOCO flags (--train_image_dir, --val_image_dir, "
            "--train_captions_file, --val_captions_file), or --karpathy_split_file with "
            "--image_dir, or --captions_file with --image_dir"
        )
    if sources[0]:
        missing = [
            f"--{name}"
            for name, value in zip(
                ("train_image_dir", "val_image_dir", "train_captions_file", "val_captions_file"),
                mscoco,
                strict=True,
            )
            if value is None
        ]
        if missing:
            raise ShowtellError(f"MSCOCO source is missing {', '.join(missing)}")
        build_mscoco(
            args.train_captions_file,
            args.train_image_dir,
            args.val_captions_file,
            args.val_image_dir,
            config,
        )
        return 0
    if args.image_dir is None:
        raise ShowtellError("--karpathy_split_file and --captions_file need --image_dir")
    if sources[1]:
        build_karpathy(args.karpathy_split_file, args.image_dir, config)
    else:
        build_coco_file(
            args.captions_file, args.image_dir, args.val_fraction, args.test_fraction, config
        )
    return 0


def add_build_command(sub: Any) -> None:
    p = sub.add_parser(
        "build-mscoco-data",
        aliases=["build_mscoco_data"],
        help="build im2txt's TFRecord shards and word_counts.txt from captions and images",
        description="Writes SequenceExample shards (train/val/test) and word_counts.txt. "
        "Sources: MSCOCO 2014 with im2txt's split (the four MSCOCO flags), a "
        "Karpathy-split JSON, or any one COCO-format caption file.",
    )
    g = p.add_argument_group("MSCOCO 2014 source (im2txt's split)")
    add_flag(g, "train_image_dir", type=Path, help="e.g. raw-data/train2014")
    add_flag(g, "val_image_dir", type=Path, help="e.g. raw-data/val2014")
    add_flag(g, "train_captions_file", type=Path, help="captions_train2014.json")
    add_flag(g, "val_captions_file", type=Path, help="captions_val2014.json")
    g = p.add_argument_group("other sources")
    add_flag(
        g, "karpathy_split_file", type=Path, help="dataset_coco.json, dataset_flickr8k.json..."
    )
    add_flag(g, "captions_file", type=Path, help="one COCO-format caption file")
    add_flag(g, "image_dir", type=Path, help="the images of the file above")
    add_flag(
        g,
        "val_fraction",
        type=float,
        default=0.05,
        help="with --captions_file: share of images for val (default: %(default)s)",
    )
    add_flag(
        g,
        "test_fraction",
        type=float,
        default=0.10,
        help="with --captions_file: share of images for test (default: %(default)s)",
    )
    add_flag(p, "output_dir", type=Path, help="where shards, word_counts.txt, dataset.json go")
    _add_build_flags(p)
    p.set_defaults(func=_cmd_build)


# --- download-and-preprocess-mscoco --------------------------------------------------------


def _cmd_download(args: argparse.Namespace) -> int:
    from showtell.data.download import download_and_preprocess_mscoco

    download_and_preprocess_mscoco(
        args.output_dir,
        _build_config(args, args.output_dir),
        base_url=args.base_url,
        attempts=args.download_attempts,
        backoff_seconds=args.retry_seconds,
    )
    return 0


def add_download_command(sub: Any) -> None:
    from showtell.data.download import COCO_BASE_URL

    p = sub.add_parser(
        "download-and-preprocess-mscoco",
        aliases=["download_and_preprocess_mscoco"],
        help="download MSCOCO 2014 (~20 GB), unpack it and build the records",
        description="Downloads train2014.zip (13.5 GB), val2014.zip (6.6 GB) and "
        "annotations_trainval2014.zip (253 MB) into DIR/raw-data, resuming interrupted "
        "downloads, unpacks them and builds the records into DIR. Needs ~150 GB free.",
    )
    p.add_argument("output_dir", type=Path, metavar="DIR")
    add_flag(p, "base_url", default=COCO_BASE_URL, help="mirror to download from")
    add_flag(
        p,
        "download_attempts",
        type=positive_int,
        default=10,
        help="tries per file; each resumes where the last stopped (default: %(default)s)",
    )
    add_flag(
        p,
        "retry_seconds",
        type=float,
        default=2.0,
        help="wait before the first retry, doubling each time (default: %(default)s)",
    )
    _add_build_flags(p)
    p.set_defaults(func=_cmd_download)


# --- show-records ------------------------------------------------------------------------


def _cmd_show_records(args: argparse.Namespace) -> int:
    from showtell.data.show_records import print_records

    print_records(args.pattern, args.limit, args.json, sys.stdout)
    return 0


def add_show_records_command(sub: Any) -> None:
    p = sub.add_parser(
        "show-records",
        aliases=["show_records"],
        help="print the records of im2txt-format shards (ours or TensorFlow's)",
    )
    p.add_argument("pattern", help="shard glob(s), comma-separated, e.g. 'out/val-*'")
    add_flag(p, "limit", type=int, default=None, help="stop after N records")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_show_records)


# --- make-synthetic ----------------------------------------------------------------------


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from showtell.demo.synthetic import SyntheticConfig, make_synthetic

    config = SyntheticConfig(
        num_images=args.images,
        seed=args.seed,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        max_objects=args.max_objects,
    )
    s = make_synthetic(args.output_dir, config, workers=args.num_workers)
    print(
        f"Wrote {s['images']:,} images ({s['train_images']:,} train, {s['val_images']:,} val) "
        f"and {s['captions']:,} captions to {s['output_dir']} in {s['seconds']:.1f} s "
        f"({s['images_per_second']:,.0f} images/s)"
    )
    return 0


def add_make_synthetic_command(sub: Any) -> None:
    from showtell.demo.synthetic import SyntheticConfig

    d = SyntheticConfig()
    p = sub.add_parser(
        "make-synthetic",
        aliases=["make_synthetic"],
        help="write an offline data set of coloured shapes in MSCOCO 2014's layout",
    )
    p.add_argument("output_dir", type=Path, metavar="DIR")
    add_flag(p, "images", type=positive_int, default=d.num_images, help="(default: %(default)s)")
    add_flag(p, "seed", type=int, default=d.seed, help="(default: %(default)s)")
    add_flag(p, "image_size", type=int, default=d.image_size, help="pixels (default: %(default)s)")
    add_flag(
        p,
        "val_fraction",
        type=float,
        default=d.val_fraction,
        help="share of images in the val split (default: %(default)s)",
    )
    add_flag(
        p,
        "max_objects",
        type=int,
        choices=(1, 2, 3),
        default=d.max_objects,
        help="(default: %(default)s)",
    )
    add_flag(p, "num_workers", type=positive_int, default=None, help="(default: CPUs)")
    p.set_defaults(func=_cmd_make_synthetic)
