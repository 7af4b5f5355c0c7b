"""The `showtell` command: one subcommand per step of the pipeline.

Flags keep the seed's names (`--train_image_dir`, `--input_file_pattern`, ...) and
also accept dashed forms (`--train-image-dir`). A ShowtellError becomes a one-line
`error: ...` on stderr and exit status 2, never a traceback.

The commands are grouped by what they work on: `data` (make-synthetic, download,
build-mscoco-data, show-records), `train` (train, convert-im2txt-checkpoint, demo),
`apps` (run-inference, evaluate, score, export, serve); `flags` holds the flag builders
they share, `train`'s flags generated from the settings dataclasses.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from showtell import __version__
from showtell.cli import apps, data, train
from showtell.errors import ShowtellError
from showtell.logs import configure_console

COMMANDS: tuple[Callable[[Any], None], ...] = (
    data.add_make_synthetic_command,
    data.add_download_command,
    data.add_build_command,
    data.add_show_records_command,
    train.add_train_command,
    apps.add_run_inference_command,
    apps.add_evaluate_command,
    apps.add_score_command,
    apps.add_export_command,
    apps.add_serve_command,
    train.add_convert_im2txt_checkpoint_command,
    train.add_demo_command,
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
