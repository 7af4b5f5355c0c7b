"""What training reports every `--log_every_n_steps` steps: TensorBoard scalars (im2txt's
names) and one console line, both over the steps since the last report. Rank 0 only."""

from __future__ import annotations

import logging
import sys
import time
import types
from pathlib import Path

from showtell.training.step import StepResult

logger = logging.getLogger(__name__)


class ProgressLog:
    """The loss, speed and caption lengths of a window of steps, written to TensorBoard
    event files in `train_dir` and logged as one line."""

    def __init__(self, train_dir: Path, every: int, world_size: int = 1) -> None:
        # Where TensorFlow is installed, TensorBoard imports all of it (seconds of every
        # start) only to write event files, which its own stub writes the same.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(train_dir))
        self.every, self.world_size = every, world_size
        self._start_window()

    def _start_window(self) -> None:
        self.start, self.captions, self.loss, self.steps = time.time(), 0, 0.0, 0

    def step(
        self,
        global_step: int,
        result: StepResult,
        loss: float,
        learning_rate: float,
        extra: dict[str, float],
    ) -> None:
        """Counts a step (`loss`: its caption loss, already read off the device); every
        `every` steps writes the window's numbers. `extra`: more scalars by TensorBoard
        name (scheduled sampling's probability, SCST's rewards)."""
        self.captions += len(result.batch) * self.world_size
        self.loss += loss
        self.steps += 1
        if global_step % self.every:
            return
        elapsed = time.time() - self.start
        rate = self.captions / elapsed if elapsed > 0 else 0.0
        lengths = result.batch.mask.sum(1).float()
        total_loss = result.total_loss.item()
        scalars = {
            "losses/batch_loss": loss,
            "losses/total_loss": total_loss,
            "learning_rate": learning_rate,
            **extra,
            "captions/length_mean": float(lengths.mean()),
            "captions/length_max": float(lengths.max()),
            "captions/length_min": float(lengths.min()),
            "captions_per_second": rate,
        }
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step)
        reward = f", reward {extra['scst/reward']:.4f}" if "scst/reward" in extra else ""
        logger.info(
            "step %d: loss %.4f (mean of %d steps), total_loss %.4f, lr %g, %s captions/s%s",
            global_step,
            self.loss / self.steps,
            self.steps,
            total_loss,
            learning_rate,
            f"{rate:,.1f}",
            reward,
        )
        self._start_window()

    def close(self) -> None:
        self.writer.close()
