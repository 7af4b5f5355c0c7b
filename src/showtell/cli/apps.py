"""Captioning commands: run-inference, evaluate, score, export, serve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from showtell.cli.flags import (
    add_beam_flags,
    add_flag,
    beam_settings,
    positive_int,
    positive_seconds,
)

# --- run-inference ----------------------------------------------------------------------


def _cmd_run_inference(args: argparse.Namespace) -> int:
    import json
    import math

    from showtell.inference import Captioner, caption_files, expand_input_files, format_captions

    files = expand_input_files(args.input_files)
    captioner = Captioner(
        args.checkpoint_path, vocab_file=args.vocab_file, device=args.device, **beam_settings(args)
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


def add_run_inference_command(sub: Any) -> None:
    from showtell.data.images import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

    p = sub.add_parser(
        "run-inference",
        aliases=["run_inference", "caption"],
        help="caption image files with a trained model",
        description="im2txt's run_inference, batched. Exit status 1 if any file failed.",
    )
    add_flag(
        p,
        "checkpoint_path",
        required=True,
        help="a checkpoint folder, or a train_dir (its newest complete checkpoint); or "
        "im2txt's: its train dir or a model.ckpt-N (with --vocab_file); several, comma-"
        "separated: an ensemble (probabilities averaged in one beam search)",
    )
    add_flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    add_flag(p, "input_files", required=True, help="comma-separated files and globs")
    add_flag(p, "batch_size", type=positive_int, default=32, help="images per batch")
    add_flag(p, "num_workers", type=int, default=2, help="processes decoding images")
    add_flag(
        p,
        "max_pixels",
        type=positive_int,
        default=None,
        help=f"refuse images with more pixels (default: ${MAX_PIXELS_ENV}, else "
        f"{MAX_IMAGE_PIXELS:,})",
    )
    add_flag(p, "device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    add_beam_flags(p)
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
            **beam_settings(args),
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


def add_evaluate_command(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="perplexity loop beside training (the seed's), or --metrics on a split",
        description="Without --metrics: im2txt's evaluate, a loop over new checkpoints "
        "writing Perplexity to TensorBoard (--once: the newest, then exit). With "
        "--metrics: beam-search captions for every image of the split and BLEU-1..4, "
        "METEOR, ROUGE-L, CIDEr-D, a COCO results file and an HTML gallery.",
    )
    add_flag(p, "input_file_pattern", required=True, help="e.g. DIR/val-?????-of-00004")
    add_flag(
        p,
        "checkpoint_dir",
        type=Path,
        required=True,
        help="a train_dir or checkpoint folder; with --metrics, several comma-separated: an "
        "ensemble (probabilities averaged in one beam search)",
    )
    add_flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    add_flag(p, "eval_dir", type=Path, required=True, help="where results and events go")
    add_flag(p, "eval_interval_secs", type=float, default=600, help="(default: %(default)s)")
    add_flag(p, "min_global_step", type=int, default=5000, help="(default: %(default)s)")
    add_flag(
        p, "num_eval_examples", type=positive_int, default=10132, help="(default: %(default)s)"
    )
    p.add_argument("--once", action="store_true", help="evaluate the newest checkpoint and exit")
    p.add_argument("--metrics", action="store_true", help="caption metrics instead of perplexity")
    add_flag(
        p,
        "annotations",
        type=Path,
        default=None,
        help="with --metrics: COCO caption file with the raw reference captions",
    )
    add_flag(p, "gallery_size", type=int, default=200, help="images in the HTML gallery")
    add_flag(p, "batch_size", type=positive_int, default=32, help="(default: %(default)s)")
    add_flag(p, "num_workers", type=int, default=2, help="(default: %(default)s)")
    add_flag(p, "device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    add_beam_flags(p)
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


def add_score_command(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="COCO caption metrics of any results file against any COCO caption file",
    )
    add_flag(p, "results", type=Path, required=True, help='[{"image_id": ..., "caption": ...}]')
    add_flag(p, "annotations", type=Path, required=True, help="COCO-format caption file")
    p.add_argument("--json", action="store_true", help="one JSON object: Bleu_1 .. CIDEr")
    p.set_defaults(func=_cmd_score)


# --- export ------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from showtell.config import InferenceConfig
    from showtell.export import export_onnx

    out = export_onnx(
        args.checkpoint_path,
        args.output,
        InferenceConfig(**beam_settings(args)),
        vocab_file=args.vocab_file,
    )
    print(f"Exported {args.checkpoint_path} to {out} (encoder.onnx, step.onnx)")
    return 0


def add_export_command(sub: Any) -> None:
    p = sub.add_parser("export", help="export a checkpoint for deployment (ONNX)")
    add_flag(p, "checkpoint_path", required=True, help="a checkpoint folder or a train_dir")
    add_flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    p.add_argument("--format", choices=["onnx"], default="onnx", help="(default: %(default)s)")
    p.add_argument("--output", type=Path, required=True, help="folder to write")
    add_beam_flags(p)
    p.set_defaults(func=_cmd_export)


# --- serve -------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from showtell.inference import Captioner
    from showtell.serve.app import serve
    from showtell.serve.limits import ServeLimits

    captioner = Captioner(
        args.checkpoint_path,
        vocab_file=args.vocab_file,
        device=args.device,
        **beam_settings(args),
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


def add_serve_command(sub: Any) -> None:
    p = sub.add_parser("serve", help="captions over HTTP (JSON API and a web page)")
    add_flag(
        p,
        "checkpoint_path",
        required=True,
        help="a checkpoint folder or a train_dir; several, comma-separated: an ensemble "
        "(probabilities averaged in one beam search)",
    )
    add_flag(
        p,
        "vocab_file",
        default=None,
        help="word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
        "checkpoint carries its own (if given, must match it)",
    )
    add_flag(p, "host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add_flag(p, "port", type=int, default=8000, help="(default: %(default)s)")
    add_flag(p, "device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    add_flag(p, "max_batch", type=positive_int, default=32, help="images per batch")
    add_flag(p, "max_wait_ms", type=float, default=10.0, help="wait for a batch to fill")
    add_flag(p, "max_images", type=positive_int, default=16, help="images per request")
    add_flag(p, "max_request_mb", type=positive_int, default=32, help="request size limit")
    add_flag(p, "max_pixels", type=positive_int, default=40_000_000, help="per image")
    add_flag(
        p,
        "max_request_pixels",
        type=positive_int,
        default=200_000_000,
        help="pixels of all images of a request (default: %(default)s)",
    )
    add_flag(
        p,
        "exact_pixels",
        type=positive_int,
        default=16_000_000,
        help="larger images are box-reduced to at most this many pixels (default: %(default)s)",
    )
    add_flag(
        p,
        "decode_workers",
        type=positive_int,
        default=2,
        help="images decoded at a time (default: %(default)s)",
    )
    add_flag(
        p,
        "max_pending",
        type=positive_int,
        default=64,
        help="decoded images waiting for the model (default: %(default)s)",
    )
    add_flag(
        p,
        "header_timeout",
        type=positive_seconds,
        default=10.0,
        help="seconds for a request's headers to arrive (default: %(default)s)",
    )
    add_flag(
        p,
        "body_timeout",
        type=positive_seconds,
        default=60.0,
        help="seconds for a request's body to arrive (default: %(default)s)",
    )
    add_flag(
        p,
        "max_connections",
        type=positive_int,
        default=256,
        help="open connections; more get a 503 (default: %(default)s)",
    )
    add_beam_flags(p)
    p.set_defaults(func=_cmd_serve)
