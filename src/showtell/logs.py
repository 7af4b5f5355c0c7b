"""showtell's log on a console: library modules log (`logging.getLogger(__name__)`, all
under the "showtell" logger) and never print; the command line calls `configure_console`
once, which shows each record as a plain line as the commands always printed them.
Under torchrun only rank 0 reports progress: `quiet_other_ranks` (called by the
process set-up) leaves the other ranks their warnings and errors alone.

A program that uses showtell as a library sees nothing below WARNING unless it sets
up logging itself (e.g. `logging.basicConfig(level=logging.INFO)`).
"""

from __future__ import annotations

import logging
import sys

ROOT = "showtell"  # the logger every showtell module's logger descends from


class ConsoleHandler(logging.Handler):
    """Each record as its message alone: progress (INFO and below) on stdout, warnings
    on stderr as "warning: ...", errors as "error: ...". The streams are looked up at
    each record, not kept, so output follows a replaced sys.stdout (pytest's capture,
    `contextlib.redirect_stdout`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                stream, message = sys.stderr, f"error: {message}"
            elif record.levelno >= logging.WARNING:
                stream, message = sys.stderr, f"warning: {message}"
            else:
                stream = sys.stdout
            stream.write(message + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_console(level: int = logging.INFO) -> None:
    """Shows showtell's log on the console from `level` up (once; calling again does
    nothing). A level already set (`quiet_other_ranks`) is kept."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(level)


def quiet_other_ranks(rank: int) -> None:
    """On a torchrun rank other than 0: warnings and errors only. Every rank runs the
    same loop; N copies of each progress line would tell nothing more."""
    if rank != 0:
        logging.getLogger(ROOT).setLevel(logging.WARNING)
