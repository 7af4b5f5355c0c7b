"""Training commands: train, convert-im2txt-checkpoint, demo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from showtell.cli.flags import (
    add_dataclass_flags,
    add_flag,
    given_flags,
    preset_layer,
    settings_from_flags,
)
from showtell.config.merge import FLAGS

# --- train -------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from showtell.config import TrainConfig
    from showtell.model import model_request
    from showtell.training.train import train

    # Each a preset's section under the flags given, typed once here; an unknown key,
    # a bad value or a contradiction is one line naming the file and key or the flag.
    config = settings_from_flags(args, TrainConfig, "train.", *preset_layer(args.config, "train"))
    model = model_request(*preset_layer(args.config, "model"), (FLAGS, given_flags(args, "model.")))
    train(config, model)
    return 0


def add_train_command(sub: Any) -> None:
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
    add_dataclass_flags(p, TrainConfig, "train.")
    add_dataclass_flags(p, ModelConfig, "model.", skip=("vocab_size",))
    p.set_defaults(func=_cmd_train)


# --- im2txt's checkpoints -----------------------------------------------------------------


def _cmd_convert_im2txt_checkpoint(args: argparse.Namespace) -> int:
    from showtell.tf_import.im2txt import convert_im2txt_checkpoint

    out = convert_im2txt_checkpoint(args.checkpoint_path, args.vocab_file, args.output_dir)
    print(f"Wrote {out} from {args.checkpoint_path} (a showtell checkpoint: no TensorFlow needed)")
    return 0


def add_convert_im2txt_checkpoint_command(sub: Any) -> None:
    p = sub.add_parser(
        "convert-im2txt-checkpoint",
        help="convert an im2txt (TensorFlow) checkpoint into a showtell checkpoint",
        description="Reads an im2txt model (its train dir, or a model.ckpt-N prefix or V1 "
        "file; any TensorFlow version's LSTM names) with its vocabulary and writes it as "
        "a showtell checkpoint in --output_dir, which every command then reads without "
        "TensorFlow.",
    )
    add_flag(p, "checkpoint_path", required=True, help="im2txt's train dir or a model.ckpt-N")
    add_flag(p, "vocab_file", required=True, help="the word_counts.txt it was trained with")
    add_flag(p, "output_dir", type=Path, required=True, help="a train_dir to write it into")
    p.set_defaults(func=_cmd_convert_im2txt_checkpoint)


# --- demo --------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from showtell.config.commands import DemoSettings
    from showtell.demo.pipeline import run_demo

    settings = settings_from_flags(args, DemoSettings)
    run_demo(settings.output_dir, settings.config)
    return 0


def add_demo_command(sub: Any) -> None:
    from showtell.config.commands import DemoSettings

    p = sub.add_parser("demo", help="run the pipeline on built-in synthetic data")
    add_dataclass_flags(p, DemoSettings, title="demo")
    p.set_defaults(func=_cmd_demo)
