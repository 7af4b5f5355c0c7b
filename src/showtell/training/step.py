"""One training step, and what decides it: the phase, the optimizer, the learning rate.

The phase is decided once from the settings (`Phase.from_config`) and read everywhere
after: which parameters train, whether batches carry cached features or images, the
optimizer and the learning-rate schedule, and what a checkpoint records of it.

    phase 1     frozen encoder; cached features (or images with `--no-feature-cache`);
                `--optimizer` (im2txt: SGD), 2.0 halved every 8 epochs (staircase)
    phase 2     `--train_inception`: the encoder trains too, images from the records,
                its weights' L2 loss added; a constant 0.0005
    SCST        `--scst`: frozen encoder on cached features; Adam at a constant
                `--scst_learning_rate`; the loss is `SelfCritical.loss` (training/scst.py)

`TrainStep` is the step the training loop runs and `benchmarks/train.py` times:
forward under autocast, backward, global-norm clipping, the optimizer's update.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from showtell.config import TrainConfig
from showtell.data.dataset import Batch
from showtell.model import ShowAndTell
from showtell.training.scst import SelfCritical

# The update rule of each of im2txt's `TrainingConfig.optimizer` names
# (tf.contrib.layers.optimize_loss's); TrainConfig accepts config.OPTIMIZERS, these keys.
OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]] = {
    "SGD": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "Momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "Adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "Adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
}


@dataclass(frozen=True)
class Phase:
    """What a run trains, on what, and with which update rule (the module's table)."""

    name: int | str  # 1, 2 or "SCST": what the log and the summary call it
    train_encoder: bool  # phase 2: the encoder's weights train and their L2 loss counts
    cached_features: bool  # batches carry the encoder's cached features, not images
    scst: bool  # the loss is SCST's policy gradient on captions the model samples
    optimizer: str  # a key of OPTIMIZERS

    @classmethod
    def from_config(cls, config: TrainConfig) -> Phase:
        scst = bool(config.scst)
        return cls(
            name="SCST" if scst else 2 if config.train_inception else 1,
            train_encoder=config.train_inception,
            cached_features=bool(config.feature_cache or scst) and not config.train_inception,
            scst=scst,
            optimizer="Adam" if scst else config.optimizer,
        )

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the phase (im2txt's `train_inception`, and SCST)."""
        return {"train_inception": self.train_encoder, "scst": self.scst}

    def continues(self, state: dict[str, Any]) -> bool:
        """Whether a checkpoint's training state was saved in this phase (its optimizer
        and data position then carry on; across phases both start afresh)."""
        return (
            bool(state.get("train_inception")) == self.train_encoder
            and bool(state.get("scst")) == self.scst
        )

    def learning_rate(self, step: int, config: TrainConfig, steps_per_epoch: float) -> float:
        """im2txt's schedule: staircase exponential decay in phase 1, constant in phase 2
        (and in SCST)."""
        if self.scst:
            return config.scst_learning_rate
        if self.train_encoder:
            return config.train_inception_learning_rate
        decay_steps = max(1, int(steps_per_epoch * config.num_epochs_per_decay))
        return config.initial_learning_rate * config.learning_rate_decay_factor ** (
            step // decay_steps
        )

    def optimizer_for(self, model: ShowAndTell, learning_rate: float) -> torch.optim.Optimizer:
        """The phase's optimizer over the parameters that train (call after
        `model.set_train_encoder`)."""
        parameters = [p for p in model.parameters() if p.requires_grad]
        return OPTIMIZERS[self.optimizer](parameters, learning_rate)


def learning_rate(step: int, config: TrainConfig, steps_per_epoch: float) -> float:
    """The learning rate at `step` in the phase `config` describes."""
    return Phase.from_config(config).learning_rate(step, config, steps_per_epoch)


@dataclass
class StepResult:
    """What one step leaves for the log (tensors, not synchronised with the device)."""

    batch: Batch  # the batch the loss was taken on (SCST: the captions it sampled)
    loss: torch.Tensor  # the caption loss (im2txt's batch_loss)
    total_loss: torch.Tensor  # what was differentiated: + the encoder's L2 loss in phase 2


class TrainStep:
    """One optimisation step of a phase: the loss on a batch (computed in `autocast`),
    gradients, their global norm clipped to `clip_gradients`, the optimizer's update.

    `network` is what the loss is computed with: the model itself, or the model wrapped
    by DistributedDataParallel or torch.compile. `model` is the bare model (its encoder's
    L2 loss). `scst`: SCST's loss in place of cross-entropy."""

    def __init__(
        self,
        model: ShowAndTell,
        optimizer: torch.optim.Optimizer,
        phase: Phase,
        clip_gradients: float,
        *,
        network: torch.nn.Module | None = None,
        autocast: AbstractContextManager | None = None,
        scst: SelfCritical | None = None,
    ) -> None:
        if phase.scst != (scst is not None):
            raise ValueError("an SCST phase needs its SelfCritical, and only it")
        self.model, self.optimizer, self.phase = model, optimizer, phase
        self.network = network if network is not None else model
        self.clip_gradients = clip_gradients
        self.autocast = autocast if autocast is not None else nullcontext()
        self.scst = scst
        # The optimizer's own list, in its order: the global norm sums in this order.
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(
        self, batch: Batch, learning_rate: float, sampling_probability: float = 0.0
    ) -> StepResult:
        """One step on `batch` (already on the device) at `learning_rate`."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        with self.autocast:
            if self.scst is not None:  # the captions it sampled stand for the batch below
                batch, loss = self.scst.loss(self.network, batch)
            else:
                source = "features" if self.phase.cached_features else "images"
                loss = self.network(
                    batch.input_seqs,
                    batch.target_seqs,
                    batch.mask,
                    **{source: batch.images},
                    sampling_probability=sampling_probability,
                )
            total_loss = loss + (self.model.encoder_l2_loss() if self.phase.train_encoder else 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_gradients)
        self.optimizer.step()
        return StepResult(batch, loss.detach(), total_loss.detach())
