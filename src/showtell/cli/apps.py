"""Captioning commands: run-inference, evaluate, score, export, serve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from showtell.cli.flags import add_dataclass_flags, add_flag, preset_layer, settings_from_flags
from showtell.config.commands import (
    EvaluateSettings,
    ExportSettings,
    RunInferenceSettings,
    ServeSettings,
)
from showtell.config.merge import T

if TYPE_CHECKING:
    from showtell.inference import Captioner


def _add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """The command's flags, from its settings dataclass; beam search's in a group of its
    own, with `--config`, a preset whose `inference` section they go over."""
    add_dataclass_flags(parser, cls, skip=("beam",), title=f"{parser.prog.split()[-1]}")
    add_dataclass_flags(
        parser, cls, title="beam search (im2txt's defaults, or the preset's)", only=("beam",)
    )
    parser.add_argument("--config", default=None, help="a preset whose 'inference' settings apply")


def _settings(args: argparse.Namespace, cls: type[T]) -> T:
    return settings_from_flags(args, cls, "", *preset_layer(args.config, "inference", "beam"))


def _captioner(settings: Any, checkpoint: Any = None) -> Captioner:
    from showtell.inference import Captioner

    return Captioner(
        checkpoint or settings.checkpoint_path,
        vocab_file=settings.vocab_file,
        device=settings.device,
        beam_size=settings.beam.beam_size,
        max_caption_length=settings.beam.max_caption_length,
        length_normalization_factor=settings.beam.length_normalization_factor,
    )


# --- run-inference ----------------------------------------------------------------------


def _cmd_run_inference(args: argparse.Namespace) -> int:
    import json
    import math

    from showtell.inference import caption_files, expand_input_files, format_captions

    settings = _settings(args, RunInferenceSettings)
    files = expand_input_files(settings.input_files)
    captioner = _captioner(settings)
    failed = 0
    results = caption_files(
        captioner,
        files,
        settings.batch_size,
        settings.num_workers,
        max_pixels=settings.max_pixels,
    )
    for result in results:
        if result.error is not None:
            failed += 1
            print(f"error: {result.error_message()}", file=sys.stderr, flush=True)
        elif settings.json:
            captions = [
                {"caption": s, "log_prob": lp, "p": math.exp(lp)} for s, lp in result.captions
            ]
            print(json.dumps({"file": result.file, "captions": captions}), flush=True)
        else:
            print(format_captions(result), flush=True)
    return 1 if failed else 0


def add_run_inference_command(sub: Any) -> None:
    p = sub.add_parser(
        "run-inference",
        aliases=["run_inference", "caption"],
        help="caption image files with a trained model",
        description="im2txt's run_inference, batched. Exit status 1 if any file failed.",
    )
    _add_settings(p, RunInferenceSettings)
    p.set_defaults(func=_cmd_run_inference)


# --- evaluate and score -----------------------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    settings = _settings(args, EvaluateSettings)
    if settings.metrics:
        from showtell.evaluation.evaluate import evaluate_metrics

        evaluate_metrics(
            _captioner(settings, settings.checkpoint_dir),
            settings.input_file_pattern,
            settings.eval_dir,
            annotations=settings.annotations,
            batch_size=settings.batch_size,
            gallery_size=settings.gallery_size,
        )
        return 0
    from showtell.evaluation.evaluate import run_perplexity_loop

    run_perplexity_loop(settings)
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
    _add_settings(p, EvaluateSettings)
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
    from showtell.export import export_onnx

    settings = _settings(args, ExportSettings)
    out = export_onnx(
        settings.checkpoint_path, settings.output, settings.beam, vocab_file=settings.vocab_file
    )
    print(f"Exported {settings.checkpoint_path} to {out} (encoder.onnx, step.onnx)")
    return 0


def add_export_command(sub: Any) -> None:
    p = sub.add_parser("export", help="export a checkpoint for deployment (ONNX)")
    _add_settings(p, ExportSettings)
    p.set_defaults(func=_cmd_export)


# --- serve -------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from showtell.serve.app import serve

    settings = _settings(args, ServeSettings)
    serve(_captioner(settings), settings.host, settings.port, settings.limits)
    return 0


def add_serve_command(sub: Any) -> None:
    p = sub.add_parser("serve", help="captions over HTTP (JSON API and a web page)")
    _add_settings(p, ServeSettings)
    p.set_defaults(func=_cmd_serve)
