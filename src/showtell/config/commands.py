"""The settings of the captioning commands (run-inference, evaluate, export, serve), one
dataclass each: every field is a flag of its command (`cli/flags.py` builds them), its
help and default written once, here. A command's entry function takes its dataclass
and keeps no defaults of its own. Beam search's settings are `InferenceConfig`, nested
flat (`--beam_size`), under a preset's `inference` section when `--config` names one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from showtell.config import DEVICE_HELP, InferenceConfig, opt
from showtell.config.merge import SettingError, check_least

VOCAB_HELP = (
    "word_counts.txt: required for an im2txt (TensorFlow) checkpoint; a showtell "
    "checkpoint carries its own (if given, must match it)"
)
ENSEMBLE_HELP = "several, comma-separated: an ensemble (probabilities averaged in one beam search)"


BEAM = {"help": "beam search (im2txt's defaults, or the preset's)", "flat": True}


def _check_least(settings: Any, least: float, *names: str) -> None:
    for name in names:
        check_least(name, getattr(settings, name), least)


@dataclass
class RunInferenceSettings:
    """`showtell run-inference` (im2txt's run_inference, batched)."""

    checkpoint_path: str = field(
        metadata={
            "help": "a checkpoint folder, or a train_dir (its newest complete checkpoint); "
            f"or im2txt's: its train dir or a model.ckpt-N (with --vocab_file); {ENSEMBLE_HELP}"
        }
    )
    input_files: str = field(metadata={"help": "comma-separated files and globs"})
    vocab_file: str | None = opt(None, VOCAB_HELP)
    batch_size: int = opt(32, "images per batch")
    num_workers: int = opt(2, "processes decoding images")
    max_pixels: int | None = opt(
        None, "refuse images with more pixels (None: $SHOWTELL_MAX_PIXELS, else data/images.py's)"
    )
    device: str = opt("auto", DEVICE_HELP)
    json: bool = opt(False, "one JSON object per image")
    beam: InferenceConfig = field(default_factory=InferenceConfig, metadata=BEAM)

    def __post_init__(self) -> None:
        _check_least(self, 1, "batch_size")
        _check_least(self, 0, "num_workers")
        if self.max_pixels is not None:
            _check_least(self, 1, "max_pixels")


@dataclass
class EvaluateSettings:
    """`showtell evaluate`: im2txt's perplexity loop, or `--metrics` on a split."""

    input_file_pattern: str = field(metadata={"help": "e.g. DIR/val-?????-of-00004"})
    checkpoint_dir: Path = field(
        metadata={"help": f"a train_dir or checkpoint folder; with --metrics, {ENSEMBLE_HELP}"}
    )
    eval_dir: Path = field(metadata={"help": "where results and events go"})
    vocab_file: str | None = opt(None, VOCAB_HELP)
    eval_interval_secs: float = opt(600.0, "seconds between looks for a new checkpoint")
    min_global_step: int = opt(5000, "checkpoints before this step are not evaluated")
    num_eval_examples: int = opt(10132, "image-caption pairs the perplexity is computed on")
    once: bool = opt(False, "evaluate the newest checkpoint and exit")
    metrics: bool = opt(False, "caption metrics instead of perplexity")
    annotations: Path | None = field(
        default=None,
        metadata={"help": "with --metrics: COCO caption file with the raw reference captions"},
    )
    gallery_size: int = opt(200, "with --metrics: images in the HTML gallery")
    batch_size: int = opt(32, "images (or pairs) per batch")
    num_workers: int = opt(2, "processes reading records")
    device: str = opt("auto", DEVICE_HELP)
    beam: InferenceConfig = field(default_factory=InferenceConfig, metadata=BEAM)

    def __post_init__(self) -> None:
        _check_least(self, 1, "batch_size", "num_eval_examples")
        _check_least(self, 0, "num_workers", "gallery_size", "eval_interval_secs")


@dataclass
class ExportSettings:
    """`showtell export`: a checkpoint as ONNX graphs with the beam settings they keep."""

    checkpoint_path: str = field(metadata={"help": "a checkpoint folder or a train_dir"})
    output: Path = field(metadata={"help": "folder to write"})
    vocab_file: str | None = opt(None, VOCAB_HELP)
    format: str = field(default="onnx", metadata={"help": "export format", "choices": ("onnx",)})
    beam: InferenceConfig = field(default_factory=InferenceConfig, metadata=BEAM)


@dataclass
class ServeLimits:
    """What one client can make `showtell serve` hold (the README's serve section gives
    the worst case these imply); each is a flag."""

    max_request_bytes: int = field(
        default=32 * 2**20,
        metadata={
            "help": "request size limit in MiB: the whole body, counted as it is read",
            "flag": "max_request_mb",
            "scale": 2**20,
        },
    )
    max_images: int = opt(16, "images per request")
    max_pixels: int = opt(40_000_000, "decoded pixels per image")
    max_request_pixels: int = opt(200_000_000, "decoded pixels of all images of a request")
    exact_pixels: int = opt(16_000_000, "larger images are box-reduced to at most this")
    decode_workers: int = opt(2, "images read and decoded at a time, server-wide")
    max_pending: int = opt(64, "decoded images waiting for the model, server-wide")
    max_batch: int = opt(32, "images per beam-search batch")
    max_wait_ms: float = opt(10.0, "how long a batch waits to fill, in milliseconds")
    header_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "seconds for a request's headers to arrive (from connection or last response)",
            "flag": "header_timeout",
        },
    )
    body_timeout_s: float = field(
        default=60.0,
        metadata={"help": "seconds for a request's body to arrive", "flag": "body_timeout"},
    )
    max_connections: int = opt(256, "open connections; more are answered 503")

    def __post_init__(self) -> None:
        names = ("max_request_bytes", "max_images", "max_pixels", "max_request_pixels")
        names += ("exact_pixels", "decode_workers", "max_pending", "max_batch")
        _check_least(self, 1, *names, "max_connections")
        _check_least(self, 0, "max_wait_ms")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise SettingError(f"--{name} {getattr(self, name)}: give over 0 seconds", name)


@dataclass
class ServeSettings:
    """`showtell serve`: captions over HTTP (JSON API and a web page)."""

    checkpoint_path: str = field(
        metadata={"help": f"a checkpoint folder or a train_dir; {ENSEMBLE_HELP}"}
    )
    vocab_file: str | None = opt(None, VOCAB_HELP)
    host: str = opt("127.0.0.1", "address to bind")
    port: int = opt(8000, "port to listen on")
    device: str = opt("auto", DEVICE_HELP)
    limits: ServeLimits = field(
        default_factory=ServeLimits,
        metadata={"help": "what one client can make the server hold", "flat": True},
    )
    beam: InferenceConfig = field(default_factory=InferenceConfig, metadata=BEAM)


@dataclass
class DemoSettings:
    """`showtell demo`: the pipeline on built-in synthetic data (what it runs: the
    preset's `demo` section, `DemoConfig`)."""

    output_dir: Path = field(
        default=Path("runs/demo"), metadata={"help": "where data, records and runs go"}
    )
    config: str = opt("cpu-small", "preset")
