"""The `showtell` command: one subcommand per step of the pipeline.

Flags keep the seed's names (`--train_image_dir`, `--input_file_pattern`, ...) and
also accept dashed forms (`--train-image-dir`). A ShowtellError becomes a one-line
`error: ...` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from showtell import __version__
from showtell.errors import ShowtellError
from showtell.logs import configure_console


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Adds `--name` and, when it has underscores, `--dashed-name` as the same flag."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*names, dest=name, **kwargs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --- build-mscoco-data ------------------------------------------------------------------


def _add_build_flags(parser: argparse.ArgumentParser) -> None:
    from showtell.data.build import BuildConfig
    from showtell.data.images import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

    defaults = BuildConfig(output_dir=Path("."))
    g = parser.add_argument_group("records (as the seed's build_mscoco_data)")
    _flag(
        g,
        "train_shards",
        type=_positive_int,
        default=defaults.train_shards,
        help="shards of the training split (default: %(default)s)",
    )
    _flag(
        g,
        "val_shards",
        type=_positive_int,
        default=defaults.val_shards,
        help="shards of the validation split (default: %(default)s)",
    )
    _flag(
        g,
        "test_shards",
        type=_positive_int,
        default=defaults.test_shards,
        help="shards of the test split (default: %(default)s)",
    )
    _flag(
        g,
        "num_threads",
        type=_positive_int,
        default=defaults.num_threads,
        help="im2txt's writer threads; fixes which pairs land in which shard "
        "(default: %(default)s)",
    )
    _flag(
        g,
        "num_workers",
        type=_positive_int,
        default=None,
        help="processes writing shards (default: min(num_threads, CPUs))",
    )
    _flag(g, "start_word", default=defaults.start_word, help="(default: %(default)s)")
    _flag(g, "end_word", default=defaults.end_word, help="(default: %(default)s)")
    _flag(g, "unknown_word", default=defaults.unknown_word, help="(default: %(default)s)")
    _flag(
        g,
        "min_word_count",
        type=int,
        default=defaults.min_word_count,
        help="keep words seen at least this often in training captions (default: %(default)s)",
    )
    _flag(
        g,
        "word_counts_output_file",
        type=Path,
        default=None,
        help="vocabulary file (default: OUTPUT_DIR/word_counts.txt)",
    )
    _flag(
        g,
        "max_pixels",
        type=_positive_int,
        default=None,
        help=f"skip images with more pixels (default: ${MAX_PIXELS_ENV}, else "
        f"{MAX_IMAGE_PIXELS:,})",
    )


def _build_config(args: argparse.Namespace, output_dir: Path) -> Any:
    from showtell.data.build import BuildConfig

    return BuildConfig(
        output_dir=output_dir,
        train_shards=args.train_shards,
        val_shards=args.val_shards,
        test_shards=args.test_shards,
        num_threads=args.num_threads,
        num_workers=args.num_workers,
        start_word=args.start_word,
        end_word=args.end_word,
        unknown_word=args.unknown_word,
        min_word_count=args.min_word_count,
        word_counts_output_file=args.word_counts_output_file,
        max_pixels=args.max_pixels,
    )


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


def _add_build_command(sub: Any) -> None:
    p = sub.add_parser(
        "build-mscoco-data",
        aliases=["build_mscoco_data"],
        help="build im2txt's TFRecord shards and word_counts.txt from captions and images",
        description="Writes SequenceExample shards (train/val/test) and word_counts.txt. "
        "Sources: MSCOCO 2014 with im2txt's split (the four MSCOCO flags), a "
        "Karpathy-split JSON, or any one COCO-format caption file.",
    )
    g = p.add_argument_group("MSCOCO 2014 source (im2txt's split)")
    _flag(g, "train_image_dir", type=Path, help="e.g. raw-data/train2014")
    _flag(g, "val_image_dir", type=Path, help="e.g. raw-data/val2014")
    _flag(g, "train_captions_file", type=Path, help="captions_train2014.json")
    _flag(g, "val_captions_file", type=Path, help="captions_val2014.json")
    g = p.add_argument_group("other sources")
    _flag(g, "karpathy_split_file", type=Path, help="dataset_coco.json, dataset_flickr8k.json...")
    _flag(g, "captions_file", type=Path, help="one COCO-format caption file")
    _flag(g, "image_dir", type=Path, help="the images of the file above")
    _flag(
        g,
        "val_fraction",
        type=float,
        default=0.05,
        help="with --captions_file: share of images for val (default: %(default)s)",
    )
    _flag(
        g,
        "test_fraction",
        type=float,
        default=0.10,
        help="with --captions_file: share of images for test (default: %(default)s)",
    )
    _flag(p, "output_dir", type=Path, help="where shards, word_counts.txt, dataset.json go")
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


def _add_download_command(sub: Any) -> None:
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
    _flag(p, "base_url", default=COCO_BASE_URL, help="mirror to download from")
    _flag(
        p,
        "download_attempts",
        type=_positive_int,
        default=10,
        help="tries per file; each resumes where the last stopped (default: %(default)s)",
    )
    _flag(
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


def _add_show_records_command(sub: Any) -> None:
    p = sub.add_parser(
        "show-records",
        aliases=["show_records"],
        help="print the records of im2txt-format shards (ours or TensorFlow's)",
    )
    p.add_argument("pattern", help="shard glob(s), comma-separated, e.g. 'out/val-*'")
    _flag(p, "limit", type=int, default=None, help="stop after N records")
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


def _add_make_synthetic_command(sub: Any) -> None:
    from showtell.demo.synthetic import SyntheticConfig

    d = SyntheticConfig()
    p = sub.add_parser(
        "make-synthetic",
        aliases=["make_synthetic"],
        help="write an offline data set of coloured shapes in MSCOCO 2014's layout",
    )
    p.add_argument("output_dir", type=Path, metavar="DIR")
    _flag(p, "images", type=_positive_int, default=d.num_images, help="(default: %(default)s)")
    _flag(p, "seed", type=int, default=d.seed, help="(default: %(default)s)")
    _flag(p, "image_size", type=int, default=d.image_size, help="pixels (default: %(default)s)")
    _flag(
        p,
        "val_fraction",
        type=float,
        default=d.val_fraction,
        help="share of images in the val split (default: %(default)s)",
    )
    _flag(
        p,
        "max_objects",
        type=int,
        choices=(1, 2, 3),
        default=d.max_objects,
        help="(default: %(default)s)",
    )
    _flag(p, "num_workers", type=_positive_int, default=None, help="(default: CPUs)")
    p.set_defaults(func=_cmd_make_synthetic)


# --- train -------------------------------------------------------------------------------


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, prefix: str, skip: Sequence[str] = ()
) -> None:
    """One flag per field of a config dataclass, its help from the field: scalars as
    `--name` and `--dashed-name`, tuples as `--name A B`, nested dataclasses' fields as
    `--outer.name` (`--image.height`). Flags default to 'not given' so that presets and
    checkpoints fill the rest; `_given` reads them back as nested dicts."""
    group = parser.add_argument_group(cls.__name__)
    _add_fields(group, cls, prefix, "", skip)


def _add_fields(group: Any, cls: type, dest: str, flag: str, skip: Sequence[str] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
            _add_fields(group, f.default_factory, f"{dest}{f.name}.", f"{flag}{f.name}.")  # type: ignore[arg-type]
            continue
        default = f.default
        kwargs: dict[str, Any] = {
            "dest": f"{dest}{f.name}",
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata.get('help', '')} (default: {default})",
        }
        if isinstance(default, bool):
            kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif isinstance(default, int | float | str):
            kwargs.update(type=type(default), metavar=f.name.upper())
        elif isinstance(default, tuple) and default:
            kwargs.update(type=type(default[0]), nargs=len(default), metavar=f.name.upper())
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {type(default).__name__}")
        names = [f"--{flag}{f.name}"]
        if "_" in f.name:
            names.append(f"--{flag}{f.name.replace('_', '-')}")
        group.add_argument(*names, **kwargs)


def _prefixed(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The flags `_add_dataclass_flags` added with this prefix that were given, nested
    fields as nested dicts ({"image": {"height": 128}}), tuples as tuples."""
    given: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith(prefix):
            *outer, name = key[len(prefix) :].split(".")
            section = given
            for part in outer:
                section = section.setdefault(part, {})
            section[name] = tuple(value) if isinstance(value, list) else value
    return given


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """base with changes on top, nested dicts merged key by key (flags over a preset)."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _deep_merge(merged[key], value)
        merged[key] = value
    return merged


def _cmd_train(args: argparse.Namespace) -> int:
    from showtell.config import ModelConfig, TrainConfig, check_keys, load_preset, preset_section
    from showtell.training.train import train

    model_flags, train_flags = _prefixed(args, "model."), _prefixed(args, "train.")
    preset = load_preset(args.config) if args.config else {}
    # An unknown key in either section is one line naming the file and the key.
    check_keys(ModelConfig, preset.get("model", {}), args.config)
    config = dataclasses.replace(
        preset_section(preset, TrainConfig, "train", args.config), **train_flags
    )
    model_overrides = _deep_merge(preset.get("model", {}), model_flags)
    train(config, model_overrides)
    return 0


def _add_train_command(sub: Any) -> None:
    from showtell.config import ModelConfig, TrainConfig

    p = sub.add_parser(
        "train",
        help="train the model (phase 1: --train_inception=false; phase 2: true)",
        description="im2txt's train. Resumes from the newest checkpoint in --train_dir.",
    )
    p.add_argument(
        "--config", default=None, help="a preset name (e.g. cpu-small) or JSON file to start from"
    )
    p.add_argument(
        "--no_feature_cache",
        "--no-feature-cache",
        dest="train.feature_cache",
        action="store_false",
        default=argparse.SUPPRESS,
        help="phase 1: run the encoder every step on distorted images (im2txt's slow path)",
    )
    _add_dataclass_flags(p, TrainConfig, "train.")
    _add_dataclass_flags(p, ModelConfig, "model.", skip=("vocab_size",))
    p.set_defaults(func=_cmd_train)


# --- run-inference ----------------------------------------------------------------------


def _add_beam_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("beam search (im2txt's defaults, or the preset's)")
    g.add_argument("--config", default=None, help="a preset whose 'inference' settings apply")
    _flag(g, "beam_size", type=_positive_int, default=None, help="(default: 3)")
    _flag(g, "max_caption_length", type=_positive_int, default=None, help="(default: 20)")
    _flag(
        g,
        "length_normalization_factor",
        type=float,
        default=None,
        help="completed captions are scored logprob / length**factor (default: 0.0)",
    )


def _beam_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Beam flags given on the command line, else the preset's, else im2txt's."""
    from showtell.config import InferenceConfig, load_preset, preset_section

    preset = load_preset(args.config) if args.config else {}
    settings = dataclasses.asdict(preset_section(preset, InferenceConfig, "inference", "preset"))
    for name in settings:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return settings


def _cmd_run_inference(args: argparse.Namespace) -> int:
    import json
    import math

    from showtell.inference import Captioner, caption_files, expand_input_files, format_captions

    files = expand_input_files(args.input_files)
    captioner = Captioner(
        args.checkpoint_path, vocab_file=args.vocab_file, device=args.device, **_beam_settings(args)
    )
    failed = 0
    results = caption_files(
        captioner, files, args.batch_size, args.num_workers, max_pixels=args.max_pixels
    )
    for result in results:
        if result.error is not None:
            failed += 1
            print(f"error: {result.error_message()}", file=sys.stderr, flush=True)
        elif args.json:
            captions = [
                {"caption": s, "log_prob": lp, "p": math.exp(lp)} for s, lp in result.captions
            ]
            print(json.dumps({"file": result.file, "captions": captions}), flush=True)
        else:
            print(format_captions(result), flush=True)
    return 1 if failed else 0


def _add_run_inference_command(sub: Any) -> None:
    from showtell.data.images import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

    p = sub.add_parser(
        "run-inference",
        aliases=["run_inference", "caption"],
        help="caption image files with a trained model",
        description="im2txt's run_inference, batched. Exit status 1 if any file failed.",
    )
    _flag(
        p,
        "checkpoint_path",
        required=True,
        help="a checkpoint folder, or a train_dir (its newest complete checkpoint); or "
        "im2txt's: its train dir or a model.ckpt-N (with --vocab_file); several, comma-"
        "separated: an ensemble (probabilities averaged in one beam search)",
    )
    _flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    _flag(p, "input_files", required=True, help="comma-separated files and globs")
    _flag(p, "batch_size", type=_positive_int, default=32, help="images per batch")
    _flag(p, "num_workers", type=int, default=2, help="processes decoding images")
    _flag(
        p,
        "max_pixels",
        type=_positive_int,
        default=None,
        help=f"refuse images with more pixels (default: ${MAX_PIXELS_ENV}, else "
        f"{MAX_IMAGE_PIXELS:,})",
    )
    _flag(p, "device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    _add_beam_flags(p)
    p.set_defaults(func=_cmd_run_inference)


# --- evaluate and score -----------------------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.metrics:
        from showtell.evaluation.evaluate import evaluate_metrics
        from showtell.inference import Captioner

        captioner = Captioner(
            args.checkpoint_dir,
            vocab_file=args.vocab_file,
            device=args.device,
            **_beam_settings(args),
        )
        evaluate_metrics(
            captioner,
            args.input_file_pattern,
            args.eval_dir,
            annotations=args.annotations,
            batch_size=args.batch_size,
            gallery_size=args.gallery_size,
        )
        return 0
    from showtell.evaluation.evaluate import run_perplexity_loop

    run_perplexity_loop(
        args.input_file_pattern,
        args.checkpoint_dir,
        args.eval_dir,
        eval_interval_secs=args.eval_interval_secs,
        min_global_step=args.min_global_step,
        num_eval_examples=args.num_eval_examples,
        once=args.once,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        vocab_file=args.vocab_file,
    )
    return 0


def _add_evaluate_command(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="perplexity loop beside training (the seed's), or --metrics on a split",
        description="Without --metrics: im2txt's evaluate, a loop over new checkpoints "
        "writing Perplexity to TensorBoard (--once: the newest, then exit). With "
        "--metrics: beam-search captions for every image of the split and BLEU-1..4, "
        "METEOR, ROUGE-L, CIDEr-D, a COCO results file and an HTML gallery.",
    )
    _flag(p, "input_file_pattern", required=True, help="e.g. DIR/val-?????-of-00004")
    _flag(
        p,
        "checkpoint_dir",
        type=Path,
        required=True,
        help="a train_dir or checkpoint folder; with --metrics, several comma-separated: an "
        "ensemble (probabilities averaged in one beam search)",
    )
    _flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    _flag(p, "eval_dir", type=Path, required=True, help="where results and events go")
    _flag(p, "eval_interval_secs", type=float, default=600, help="(default: %(default)s)")
    _flag(p, "min_global_step", type=int, default=5000, help="(default: %(default)s)")
    _flag(p, "num_eval_examples", type=_positive_int, default=10132, help="(default: %(default)s)")
    p.add_argument("--once", action="store_true", help="evaluate the newest checkpoint and exit")
    p.add_argument("--metrics", action="store_true", help="caption metrics instead of perplexity")
    _flag(
        p,
        "annotations",
        type=Path,
        default=None,
        help="with --metrics: COCO caption file with the raw reference captions",
    )
    _flag(p, "gallery_size", type=int, default=200, help="images in the HTML gallery")
    _flag(p, "batch_size", type=_positive_int, default=32, help="(default: %(default)s)")
    _flag(p, "num_workers", type=int, default=2, help="(default: %(default)s)")
    _flag(p, "device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    _add_beam_flags(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_score(args: argparse.Namespace) -> int:
    import json

    from showtell.evaluation.evaluate import load_references, load_results, score_results
    from showtell.evaluation.metrics import format_scores

    scores = score_results(
        load_results(args.results), load_references(args.annotations), str(args.results)
    )
    if args.json:
        print(json.dumps(scores.corpus))
    else:
        print(format_scores(scores))
    return 0


def _add_score_command(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="COCO caption metrics of any results file against any COCO caption file",
    )
    _flag(p, "results", type=Path, required=True, help='[{"image_id": ..., "caption": ...}]')
    _flag(p, "annotations", type=Path, required=True, help="COCO-format caption file")
    p.add_argument("--json", action="store_true", help="one JSON object: Bleu_1 .. CIDEr")
    p.set_defaults(func=_cmd_score)


# --- export ------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from showtell.config import InferenceConfig
    from showtell.export import export_onnx

    out = export_onnx(
        args.checkpoint_path,
        args.output,
        InferenceConfig(**_beam_settings(args)),
        vocab_file=args.vocab_file,
    )
    print(f"Exported {args.checkpoint_path} to {out} (encoder.onnx, step.onnx)")
    return 0


def _add_export_command(sub: Any) -> None:
    p = sub.add_parser("export", help="export a checkpoint for deployment (ONNX)")
    _flag(p, "checkpoint_path", required=True, help="a checkpoint folder or a train_dir")
    _flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    p.add_argument("--format", choices=["onnx"], default="onnx", help="(default: %(default)s)")
    p.add_argument("--output", type=Path, required=True, help="folder to write")
    _add_beam_flags(p)
    p.set_defaults(func=_cmd_export)


# --- serve -------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from showtell.inference import Captioner
    from showtell.serve import ServeLimits, serve

    captioner = Captioner(
        args.checkpoint_path,
        vocab_file=args.vocab_file,
        device=args.device,
        **_beam_settings(args),
    )
    limits = ServeLimits(
        max_request_bytes=args.max_request_mb * 2**20,
        max_images=args.max_images,
        max_pixels=args.max_pixels,
        max_request_pixels=args.max_request_pixels,
        exact_pixels=args.exact_pixels,
        decode_workers=args.decode_workers,
        max_pending=args.max_pending,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
    )
    serve(captioner, args.host, args.port, limits)
    return 0


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be over 0 seconds, got {text}")
    return value


def _add_serve_command(sub: Any) -> None:
    p = sub.add_parser("serve", help="captions over HTTP (JSON API and a web page)")
    _flag(
        p,
        "checkpoint_path",
        required=True,
        help="a checkpoint folder or a train_dir; several, comma-separated: an ensemble "
        "(probabilities averaged in one beam search)",
    )
    _flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    _flag(p, "host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    _flag(p, "port", type=int, default=8000, help="(default: %(default)s)")
    _flag(p, "device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    _flag(p, "max_batch", type=_positive_int, default=32, help="images per batch")
    _flag(p, "max_wait_ms", type=float, default=10.0, help="wait for a batch to fill")
    _flag(p, "max_images", type=_positive_int, default=16, help="images per request")
    _flag(p, "max_request_mb", type=_positive_int, default=32, help="request size limit")
    _flag(p, "max_pixels", type=_positive_int, default=40_000_000, help="per image")
    _flag(
        p,
        "max_request_pixels",
        type=_positive_int,
        default=200_000_000,
        help="pixels of all images of a request (default: %(default)s)",
    )
    _flag(
        p,
        "exact_pixels",
        type=_positive_int,
        default=16_000_000,
        help="larger images are box-reduced to at most this many pixels (default: %(default)s)",
    )
    _flag(
        p,
        "decode_workers",
        type=_positive_int,
        default=2,
        help="images decoded at a time (default: %(default)s)",
    )
    _flag(
        p,
        "max_pending",
        type=_positive_int,
        default=64,
        help="decoded images waiting for the model (default: %(default)s)",
    )
    _flag(
        p,
        "header_timeout",
        type=_positive_seconds,
        default=10.0,
        help="seconds for a request's headers to arrive (default: %(default)s)",
    )
    _flag(
        p,
        "body_timeout",
        type=_positive_seconds,
        default=60.0,
        help="seconds for a request's body to arrive (default: %(default)s)",
    )
    _flag(
        p,
        "max_connections",
        type=_positive_int,
        default=256,
        help="open connections; more get a 503 (default: %(default)s)",
    )
    _add_beam_flags(p)
    p.set_defaults(func=_cmd_serve)


# --- im2txt's checkpoints -----------------------------------------------------------------


def _cmd_convert_im2txt_checkpoint(args: argparse.Namespace) -> int:
    from showtell.tf_import.im2txt import convert_im2txt_checkpoint

    out = convert_im2txt_checkpoint(args.checkpoint_path, args.vocab_file, args.output_dir)
    print(f"Wrote {out} from {args.checkpoint_path} (a showtell checkpoint: no TensorFlow needed)")
    return 0


def _add_convert_im2txt_checkpoint_command(sub: Any) -> None:
    p = sub.add_parser(
        "convert-im2txt-checkpoint",
        help="convert an im2txt (TensorFlow) checkpoint into a showtell checkpoint",
        description="Reads an im2txt model (its train dir, or a model.ckpt-N prefix or V1 "
        "file; any TensorFlow version's LSTM names) with its vocabulary and writes it as "
        "a showtell checkpoint in --output_dir, which every command then reads without "
        "TensorFlow.",
    )
    _flag(p, "checkpoint_path", required=True, help="im2txt's train dir or a model.ckpt-N")
    _flag(p, "vocab_file", required=True, help="the word_counts.txt it was trained with")
    _flag(p, "output_dir", type=Path, required=True, help="a train_dir to write it into")
    p.set_defaults(func=_cmd_convert_im2txt_checkpoint)


# --- demo --------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from showtell.demo.pipeline import run_demo

    run_demo(args.output_dir, args.config)
    return 0


def _add_demo_command(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the pipeline on built-in synthetic data")
    _flag(p, "output_dir", type=Path, default=Path("runs/demo"), help="(default: %(default)s)")
    p.add_argument("--config", default="cpu-small", help="preset (default: %(default)s)")
    p.set_defaults(func=_cmd_demo)


COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_make_synthetic_command,
    _add_download_command,
    _add_build_command,
    _add_show_records_command,
    _add_train_command,
    _add_run_inference_command,
    _add_evaluate_command,
    _add_score_command,
    _add_export_command,
    _add_serve_command,
    _add_convert_im2txt_checkpoint_command,
    _add_demo_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="showtell", description="Show and Tell image captioning (im2txt) in PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"showtell {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_console()  # the library's log lines, as plain lines on the console
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ShowtellError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an output directory that cannot be written
        if isinstance(e, BrokenPipeError):  # `showtell show-records ... | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
