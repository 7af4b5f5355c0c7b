"""showtell's log (showtell/logs.py): library modules log instead of printing; the
console shows each record as the commands always printed it; under torchrun only rank 0
shows progress. The ranks come from the real process set-up (`setup_process`), with
torch.distributed's group stood in for."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from showtell import device as devices
from showtell.device import compute_dtype, setup_process
from showtell.logs import ROOT, ConsoleHandler, configure_console

CPU = torch.device("cpu")
INFO_LINE = "cpu_bf16: this CPU has no bfloat16 instructions; training in float32"
WARNING_LINE = "warning: --precision bf16: this CPU has no bfloat16 instructions (emulated, slow)"


@pytest.fixture
def showtell_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The "showtell" logger, given back as it was (level, handlers); a CPU without
    bfloat16 instructions, so that `compute_dtype` has a line to log at each level."""
    logger = logging.getLogger(ROOT)
    level, handlers = logger.level, list(logger.handlers)
    logger.setLevel(logging.NOTSET)
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(devices.dist, "init_process_group", lambda backend, **kw: None)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def log_both_lines() -> None:
    compute_dtype(CPU, "auto", cpu_bf16=True)  # logs INFO_LINE
    compute_dtype(CPU, "bf16")  # logs WARNING_LINE


def test_the_console_prints_plain_lines_progress_out_warnings_err(
    showtell_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_console()
    configure_console()  # once only: no line twice
    assert sum(isinstance(h, ConsoleHandler) for h in showtell_logger.handlers) == 1
    log_both_lines()
    captured = capsys.readouterr()  # capsys replaced sys.stdout after configure: followed
    assert captured.out == INFO_LINE + "\n"
    assert captured.err == WARNING_LINE + "\n"


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_only_rank_0_logs_progress(
    showtell_logger: logging.Logger, capsys: pytest.CaptureFixture[str], rank: int
) -> None:
    configure_console()
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
    process = setup_process("cpu", env)
    assert process.rank == rank
    log_both_lines()
    captured = capsys.readouterr()
    assert captured.out == ("" if rank else INFO_LINE + "\n")
    assert captured.err == WARNING_LINE + "\n"  # every rank's warnings still show


def test_the_set_up_may_come_before_the_console(
    showtell_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 1's quiet survives a console configured after the process set-up."""
    setup_process("cpu", {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    configure_console()
    log_both_lines()
    assert capsys.readouterr().out == ""


def test_a_library_user_sees_records_not_prints(
    showtell_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the console: nothing printed by the library; the records reach the
    program's own logging (here pytest's), by module name."""
    showtell_logger.handlers[:] = [
        h for h in showtell_logger.handlers if not isinstance(h, ConsoleHandler)
    ]
    with caplog.at_level(logging.INFO, logger=ROOT):
        log_both_lines()
    assert capsys.readouterr().out == ""
    assert [(r.name, r.levelno) for r in caplog.records] == [
        ("showtell.device", logging.INFO),
        ("showtell.device", logging.WARNING),
    ]
