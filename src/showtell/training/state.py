"""A run's checkpoints and stops: when a checkpoint is due and writing it (`Saver`),
with what it keeps beyond weights and optimizer so that a resumed run goes on exactly
(each process's RNG states and data position, gathered to rank 0); and how a run is
asked to stop (SIGINT, SIGTERM) between steps."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from showtell.checkpoint import save_checkpoint
from showtell.config import ModelConfig, TrainConfig
from showtell.data.vocab import Vocabulary
from showtell.device import Process
from showtell.model import ShowAndTell
from showtell.training.batches import Batches
from showtell.training.step import Phase

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch, Python's, and CUDA's where there is CUDA)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Puts back what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_state(state: dict[str, Any], process: Process) -> dict[str, Any]:
    """This process's {"data": position, "rng": states} in a saved training state."""
    ranks = state.get("ranks")
    if ranks is None:  # older checkpoints: one position and rank 0's RNG for all
        return {
            "data": {"epoch": state["epoch"], "position": state["position"]},
            "rng": state["rng"],
        }
    if len(ranks) == process.world_size:
        return ranks[process.rank]
    logger.warning(
        "the checkpoint was written by %d process(es), this run has %d: each starts "
        "epoch %s from its start",
        len(ranks),
        process.world_size,
        ranks[0]["data"]["epoch"],
    )
    return {"data": {"epoch": ranks[0]["data"]["epoch"]}, "rng": ranks[0]["rng"]}


def gather(value: Any, process: Process) -> list[Any]:
    """Every rank's `value`, in rank order (on every rank)."""
    if process.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * process.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def agree(process: Process, save_now: bool, stopping: bool) -> tuple[bool, bool]:
    """Whether to save now (rank 0's clock decides) and whether to stop (any rank's
    signal decides), the same on every rank, so that all save and stop at one step."""
    if process.world_size == 1:
        return save_now, stopping
    flags = torch.tensor(
        [float(save_now and process.is_main), float(stopping)], device=process.device
    )
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


class StopSignals:
    """While training: SIGINT and SIGTERM only note that a stop was asked; the loop
    stops at the next step boundary and saves. Notes the first signal's number. Only
    the main thread can take signals; elsewhere nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Saver:
    """This run's checkpoints: when one is due (every `--save_interval_steps`, or
    `--save_interval_secs` by rank 0's clock), and writing one (every rank hands rank 0
    its data position and RNG states; rank 0 writes)."""

    def __init__(
        self,
        config: TrainConfig,
        phase: Phase,
        model: ShowAndTell,
        model_config: ModelConfig,
        vocab: Vocabulary,
        optimizer: torch.optim.Optimizer,
        batches: Batches,
        process: Process,
    ) -> None:
        self.config, self.phase, self.vocab = config, phase, vocab
        self.model, self.model_config = model, model_config
        self.optimizer, self.batches, self.process = optimizer, batches, process
        self.last: Path | None = None  # the newest checkpoint (a resumed run: its own)
        self.step = -1  # its step
        self.time = self.now = time.time()

    def due(self, step: int, signalled: bool) -> tuple[bool, bool]:
        """(save now, stop now) after `step`, the same on every rank."""
        self.now = time.time()
        every, secs = self.config.save_interval_steps, self.config.save_interval_secs
        by_steps = bool(every) and step % every == 0
        by_time = bool(secs) and self.now - self.time >= secs
        by_time, stopping = agree(self.process, by_time, signalled)
        return by_steps or by_time, stopping

    def save(self, step: int) -> None:
        ranks = gather({"data": self.batches.state(), "rng": rng_state()}, self.process)
        self.step, self.time = step, self.now
        if not self.process.is_main:
            return
        train_state = {
            "global_step": step,
            **self.phase.record(),
            "optimizer": self.optimizer.state_dict(),
            "ranks": ranks,  # each process's data position and RNG states, by rank
        }
        info = {**self.phase.record(), "train_config": asdict(self.config)}
        self.last = save_checkpoint(
            Path(self.config.train_dir),
            step,
            self.model,
            self.model_config,
            self.vocab,
            train_state,
            info,
            self.config.max_checkpoints_to_keep,
        )
