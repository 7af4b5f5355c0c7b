"""`showtell train`: im2txt's training, phase 1 (frozen encoder) and phase 2 (all).

    showtell train --input_file_pattern=DIR/train-?????-of-00256 --train_dir=RUN \
        --inception_checkpoint_file=inception_v3.pth --train_inception=false \
        --number_of_steps=1000000

Schedule (im2txt's): plain SGD, batch 32, learning rate 2.0 halved every 8 epochs
(staircase) in phase 1; a constant 0.0005 in phase 2; gradients clipped to global
norm 5. `--number_of_steps` is the global step to stop at, across phases.

Resume vs initialise: a train_dir that holds a checkpoint is resumed exactly (weights,
optimizer, step, and each process's RNG states and data position: the same batches
and the same weights as an uninterrupted run, given the same number of processes and
`--num_workers`); otherwise the model is initialised and the encoder weights file is
used (step 0 only, as in the seed). The log says which. A train_dir whose checkpoints
are all damaged is an error, not a fresh start.

SIGINT and SIGTERM (a scheduler's preemption) stop training at the next step
boundary with a checkpoint of that step; a second signal does not interrupt the save.
Then SIGINT raises KeyboardInterrupt (the CLI exits 130) and SIGTERM exits 143.

Many processes (`torchrun --nproc_per_node=N -m showtell train ...`): DDP, NCCL on
GPUs and gloo on CPUs. Each process takes `--batch_size` pairs a step, so the
effective batch is N x batch_size; the learning rate is not scaled (scale it yourself,
e.g. linearly, if you keep the effective batch large), and "8 epochs" counts epochs
of the effective batch, so the decay still happens every 8 passes over the data.
Only rank 0 writes checkpoints, logs and TensorBoard events.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from showtell.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from showtell.config import ModelConfig, TrainConfig, model_config_from_dict
from showtell.data.build import DATASET_JSON, build_markers
from showtell.data.dataset import Batch, CaptionDataset, EpochPosition, make_loader
from showtell.data.records import expand_file_patterns, read_records
from showtell.data.vocab import Vocabulary
from showtell.device import Process, compute_dtype, precision_context, setup_process
from showtell.encoders import calibrate_batch_norm, load_pretrained
from showtell.errors import ShowtellError
from showtell.model import ShowAndTell, resolve_model_config
from showtell.tf_import.reader import find_tf_checkpoint
from showtell.training.features import FeatureCache, build_feature_cache, default_cache_root
from showtell.training.scheduled_sampling import check_schedule, sampling_probability
from showtell.training.scst import ImageRows, SelfCritical, check_scst

# --- what the loop needs ---------------------------------------------------------------


def learning_rate(step: int, config: TrainConfig, steps_per_epoch: float) -> float:
    """im2txt's schedule: staircase exponential decay in phase 1, constant in phase 2
    (and in SCST)."""
    if config.scst:
        return config.scst_learning_rate
    if config.train_inception:
        return config.train_inception_learning_rate
    decay_steps = max(1, int(steps_per_epoch * config.num_epochs_per_decay))
    return config.initial_learning_rate * config.learning_rate_decay_factor ** (step // decay_steps)


# im2txt's `TrainingConfig.optimizer` names (tf.contrib.layers.optimize_loss's).
OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]] = {
    "SGD": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "Momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "Adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "Adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
}


def count_pairs(files: list[Path]) -> int:
    """Training pairs in the shards: from dataset.json when it describes exactly these
    shards, else by reading every record once."""
    info_path = files[0].parent / DATASET_JSON
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        names = sorted(p.name for p in files)
        for split in info.get("splits", {}).values():
            if sorted(split["shards"]) == names:
                return int(split["pairs"])
    return sum(1 for path in files for _ in read_records(path, verify=False))


def find_vocabulary(config: TrainConfig, files: list[Path]) -> Vocabulary:
    """The records' vocabulary, with the start and end words they were built with (their
    dataset.json's; im2txt's where there is none), which must be among its words."""
    path = Path(config.vocab_file) if config.vocab_file else files[0].parent / "word_counts.txt"
    if not path.is_file():
        raise ShowtellError(f"{path}: vocabulary not found (give --vocab_file)")
    vocab = Vocabulary.load(path, **build_markers(files[0].parent))
    for word in (vocab.start_word, vocab.end_word):
        if vocab.word_to_id(word) == vocab.unk_id:
            raise ShowtellError(
                f"{path}: no {word!r}, the start or end word of every caption in these records "
                "(build-mscoco-data's --start_word/--end_word, kept in its dataset.json)"
            )
    return vocab


def _differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            found += _differences(saved[key], value, f"{prefix}{key}.")
        elif saved.get(key) != value and not (
            isinstance(value, list | tuple) and list(saved.get(key) or []) == list(value)
        ):
            found.append(f"{prefix}{key}: checkpoint {saved.get(key)!r}, asked {value!r}")
    return found


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_state(state: dict[str, Any], process: Process) -> dict[str, Any]:
    """This process's {"data": position, "rng": states} in a saved training state."""
    ranks = state.get("ranks")
    if ranks is None:  # older checkpoints: one position and rank 0's RNG for all
        return {
            "data": {"epoch": state["epoch"], "position": state["position"]},
            "rng": state["rng"],
        }
    if len(ranks) == process.world_size:
        return ranks[process.rank]
    _say(
        process,
        f"warning: the checkpoint was written by {len(ranks)} process(es), this run has "
        f"{process.world_size}: each starts epoch {ranks[0]['data']['epoch']} from its start",
    )
    return {"data": {"epoch": ranks[0]["data"]["epoch"]}, "rng": ranks[0]["rng"]}


# --- data streams ------------------------------------------------------------------------


# Both streams are endless iterators over epochs that keep their position current
# (`state`, after each batch taken) and can be put back there (`restore`).


class CachedBatches:
    """Phase 1 from the feature cache: each epoch a fresh permutation of all pairs
    (seeded by epoch), cut into batches, every rank taking its own slice of each
    step's effective batch. (epoch, batches taken) is the whole position."""

    def __init__(
        self, cache: FeatureCache | ImageRows, batch_size: int, process: Process, seed: int
    ):
        self.cache, self.batch_size, self.process, self.seed = cache, batch_size, process, seed
        self.steps_per_epoch = cache.num_pairs // (batch_size * process.world_size)
        if self.steps_per_epoch == 0:
            raise ShowtellError(
                f"{cache.num_pairs} training pairs are fewer than one effective batch of "
                f"{batch_size * process.world_size}"
            )
        self.epoch, self.position = 0, 0

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state.get("position", 0))

    def __iter__(self) -> Iterator[Batch]:
        b, world = self.batch_size, self.process.world_size
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.cache.num_pairs, generator=g).numpy()
            while self.position < self.steps_per_epoch:
                first = (self.position * world + self.process.rank) * b
                self.position += 1
                yield self.cache.batch(np.sort(order[first : first + b]))
            self.epoch, self.position = self.epoch + 1, 0


class RecordBatches:
    """Phase 2 (or `--no-feature-cache`): images decoded and distorted from the shards.
    The position is the epoch and its `EpochPosition` (records each DataLoader worker
    has consumed from its shuffled stream, the worker due next), read off the batches."""

    def __init__(
        self, files: list[Path], model_config: ModelConfig, config: TrainConfig, process: Process
    ):
        self.dataset = CaptionDataset(
            [str(f) for f in files],
            model_config.image,
            training=True,
            seed=config.seed,
            rank=process.rank,
            world_size=process.world_size,
        )
        self.batch_size, self.config, self.process = config.batch_size, config, process
        self.steps_per_epoch = count_pairs(files) / (config.batch_size * process.world_size)
        self.readers = max(1, config.num_workers)
        self.epoch, self.position = 0, EpochPosition([0] * self.readers)

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": list(self.position.consumed),
            "next_reader": self.position.next_reader,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        consumed = state.get("consumed")
        if consumed is not None and len(consumed) == self.readers:
            self.position = EpochPosition([int(c) for c in consumed], int(state["next_reader"]))
        else:  # older checkpoints: batches taken in the epoch, dealt round robin
            taken, n = int(state.get("position", 0)), self.readers
            consumed = [len(range(r, taken, n)) * self.batch_size for r in range(n)]
            self.position = EpochPosition(consumed, taken % n)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            position = self.position
            self.dataset.set_epoch(
                self.epoch, EpochPosition(list(position.consumed), position.next_reader)
            )
            loader = make_loader(
                self.dataset,
                self.batch_size,
                self.config.num_workers,
                pin_memory=self.process.device.type == "cuda",
            )
            for batch in loader:
                assert batch.source is not None
                reader, consumed = batch.source
                position.consumed[reader] = consumed
                position.next_reader = (reader + 1) % self.readers
                yield batch
            self.epoch, self.position = self.epoch + 1, EpochPosition([0] * self.readers)


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


def _gather(value: Any, process: Process) -> list[Any]:
    """Every rank's `value`, in rank order (on every rank)."""
    if process.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * process.world_size
    dist.all_gather_object(gathered, value)
    return gathered


# --- the loop ----------------------------------------------------------------------------


def train(config: TrainConfig, model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs training until `config.number_of_steps`; returns a summary."""
    model_overrides = model_overrides or {}
    process = setup_process(config.device)
    try:
        return _train(config, model_overrides, process)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _say(process: Process, message: str) -> None:
    if process.is_main:
        print(message, flush=True)


def _train(config: TrainConfig, overrides: dict[str, Any], process: Process) -> dict[str, Any]:
    if not config.train_dir:
        raise ShowtellError("train needs --train_dir")
    if not config.input_file_pattern:
        raise ShowtellError("train needs --input_file_pattern")
    if config.optimizer not in OPTIMIZERS:
        raise ShowtellError(f"--optimizer {config.optimizer}: use one of {', '.join(OPTIMIZERS)}")
    say = partial(_say, process)
    dtype = compute_dtype(process.device, config.precision, config.cpu_bf16, say)  # checks it
    check_schedule(config)
    if config.scst:
        check_scst(config)
    train_dir = Path(config.train_dir)
    files = expand_file_patterns(config.input_file_pattern)
    vocab = find_vocabulary(config, files)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    # Resume, or initialise.
    if process.is_main:
        for leftover in remove_stale_temporaries(train_dir):
            _say(process, f"Removed {leftover.name}, left by a run that was killed while saving")
    checkpoint_path = latest_checkpoint(train_dir, strict=True) if train_dir.exists() else None
    if checkpoint_path is None and find_tf_checkpoint(train_dir) is not None:
        checkpoint_path = train_dir  # im2txt's own train dir: go on from its newest checkpoint
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path, vocab_file=vocab)
        if checkpoint.vocab.words != vocab.words:
            raise ShowtellError(
                f"{checkpoint.path}: its vocabulary ({len(checkpoint.vocab)} ids) differs from "
                f"the data's ({len(vocab)} ids): these records were built with another "
                "word_counts.txt"
            )
        wanted = asdict(model_config_from_dict(overrides)) if overrides else {}
        conflicts = _differences(
            asdict(checkpoint.model_config), {k: v for k, v in wanted.items() if k in overrides}
        )
        if conflicts:
            raise ShowtellError(
                f"{train_dir} holds a model of another configuration ("
                + "; ".join(conflicts)
                + "): use a new --train_dir"
            )
        model_config = checkpoint.model_config
    else:
        checkpoint = None
        model_config = resolve_model_config(overrides, len(vocab))

    model = ShowAndTell(model_config)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state())
        state = checkpoint.train_state()
        global_step = int(state["global_step"])
        _say(process, f"Resuming from {checkpoint.path} at step {global_step}")
    else:
        state = None
        global_step = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = load_pretrained(model.encoder, config.inception_checkpoint_file)
        for w in caught:
            if process.is_main:
                print(f"warning: {w.message}", file=sys.stderr)
        if config.train_inception and source.startswith("random"):
            _say(process, "warning: phase 2 on an empty train_dir: the encoder is random")
        _say(process, f"Initialising a new model in {train_dir} (encoder: {source})")
        if source.startswith("random"):
            used = calibrate_batch_norm(
                model.encoder, _image_batches(files, model_config, limit=2048)
            )
            _say(process, f"Calibrated the random encoder's batch-norm on {used:,} training images")
    model.set_train_encoder(config.train_inception)
    model.to(process.device)

    if global_step >= config.number_of_steps:
        _say(process, f"Step {global_step} already reaches --number_of_steps; nothing to do")
        return {"global_step": global_step, "checkpoint": str(checkpoint_path)}

    # Data: the feature cache in phase 1, else images from the records.
    use_cache = (config.feature_cache or config.scst) and not config.train_inception
    if use_cache:
        cache_root = (
            Path(config.feature_cache_dir) if config.feature_cache_dir else default_cache_root()
        )
        if process.is_main:
            cache = build_feature_cache(
                files,
                model.encoder,
                model_config.image,
                cache_root,
                process.device,
                config.num_workers,
                dtype=dtype,
            )
        if process.world_size > 1:
            dist.barrier()
            if not process.is_main:
                cache = build_feature_cache(
                    files,
                    model.encoder,
                    model_config.image,
                    cache_root,
                    process.device,
                    0,
                    dtype=dtype,
                )
        batches: CachedBatches | RecordBatches = CachedBatches(
            cache, config.batch_size, process, config.seed
        )
    else:
        batches = RecordBatches(files, model_config, config, process)
    scst = None
    if config.scst:  # batches of images, not pairs; the reward (training/scst.py)
        scst = SelfCritical(model, cache, vocab, config, train_dir, write=process.is_main)
        batches = CachedBatches(ImageRows(cache), config.batch_size, process, config.seed)

    if checkpoint is None and model_config.normalize_features:
        mean, std = (
            cache.feature_stats()
            if use_cache
            else _sample_feature_stats(model, files, model_config, process)
        )
        model.feature_mean.copy_(mean.to(process.device))
        model.feature_std.copy_(std.clamp_min(1e-6).to(process.device))

    parameters = [p for p in model.parameters() if p.requires_grad]
    lr = learning_rate(global_step, config, batches.steps_per_epoch)
    optimizer = OPTIMIZERS["Adam" if config.scst else config.optimizer](parameters, lr)
    if state is not None:
        same_phase = bool(state.get("train_inception")) == config.train_inception and bool(
            state.get("scst")
        ) == bool(config.scst)
        if same_phase and "optimizer" in state:  # none in an im2txt checkpoint
            optimizer.load_state_dict(state["optimizer"])
            mine = _rank_state(state, process)
            batches.restore(mine["data"])
            _set_rng_state(mine["rng"])
        else:
            _say(
                process,
                f"Phase changes at step {global_step}: train_inception={config.train_inception}"
                + (", scst=True" if config.scst else ""),
            )

    network: torch.nn.Module = model
    if process.world_size > 1:
        network = DistributedDataParallel(
            model, device_ids=[process.device.index] if process.device.type == "cuda" else None
        )
    if config.compile:
        network = torch.compile(network)
    autocast = precision_context(process.device, dtype)

    writer = None
    if process.is_main:
        # Where TensorFlow is installed, TensorBoard imports all of it (seconds of every
        # start) only to write event files, which its own stub writes the same.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(train_dir))

    def save(step: int) -> Path | None:
        """A checkpoint of this step (on every rank: each hands rank 0 its position)."""
        ranks = _gather({"data": batches.state(), "rng": _rng_state()}, process)
        if not process.is_main:
            return None
        train_state = {
            "global_step": step,
            "train_inception": config.train_inception,
            "scst": config.scst,
            "optimizer": optimizer.state_dict(),
            "ranks": ranks,  # each process's data position and RNG states, by rank
        }
        info = {
            "train_inception": config.train_inception,
            "scst": config.scst,
            "train_config": asdict(config),
        }
        return save_checkpoint(
            train_dir,
            step,
            model,
            model_config,
            vocab,
            train_state,
            info,
            config.max_checkpoints_to_keep,
        )

    phase: int | str = "SCST" if config.scst else 2 if config.train_inception else 1
    _say(
        process,
        f"Training phase {phase} from step {global_step} to {config.number_of_steps}: "
        f"{'cached features' if use_cache else 'images from records'}, "
        f"batch {config.batch_size} x {process.world_size} process(es), device {process.device}",
    )
    model.train()
    start_time = last_save_time = time.time()
    window_start, window_captions, window_loss, window_steps = time.time(), 0, 0.0, 0
    last_checkpoint: Path | None = checkpoint_path
    saved_step = global_step if checkpoint is not None else -1
    loss_value = float("nan")
    stream = iter(batches)
    stopping = False
    with StopSignals() as stop:
        while global_step < config.number_of_steps:
            batch = next(stream).to(process.device, non_blocking=True)
            lr = learning_rate(global_step, config, batches.steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sampling = sampling_probability(global_step, config)
            with autocast:
                if scst is not None:  # the captions it sampled stand for the batch below
                    batch, batch_loss = scst.loss(network, batch)
                else:
                    inputs = {"features": batch.images} if use_cache else {"images": batch.images}
                    batch_loss = network(
                        batch.input_seqs,
                        batch.target_seqs,
                        batch.mask,
                        **inputs,
                        sampling_probability=sampling,
                    )
                total_loss = batch_loss + (
                    model.encoder_l2_loss() if config.train_inception else 0.0
                )
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.clip_gradients)
            optimizer.step()
            global_step += 1
            loss_value = batch_loss.item()
            if not math.isfinite(loss_value):
                raise ShowtellError(
                    f"loss became {loss_value} at step {global_step}; lower the learning rate"
                )
            window_captions += len(batch) * process.world_size
            window_loss += loss_value
            window_steps += 1

            if process.is_main and global_step % config.log_every_n_steps == 0:
                elapsed = time.time() - window_start
                rate = window_captions / elapsed if elapsed > 0 else 0.0
                lengths = batch.mask.sum(1).float()
                assert writer is not None
                writer.add_scalar("losses/batch_loss", loss_value, global_step)
                writer.add_scalar("losses/total_loss", total_loss.item(), global_step)
                writer.add_scalar("learning_rate", lr, global_step)
                if config.scheduled_sampling != "off":
                    writer.add_scalar("scheduled_sampling/probability", sampling, global_step)
                for name, value in (scst.stats if scst is not None else {}).items():
                    writer.add_scalar(f"scst/{name}", value, global_step)
                writer.add_scalar("captions/length_mean", float(lengths.mean()), global_step)
                writer.add_scalar("captions/length_max", float(lengths.max()), global_step)
                writer.add_scalar("captions/length_min", float(lengths.min()), global_step)
                writer.add_scalar("captions_per_second", rate, global_step)
                print(
                    f"step {global_step}: loss {window_loss / window_steps:.4f} "
                    f"(mean of {window_steps} steps), total_loss {total_loss.item():.4f}, "
                    f"lr {lr:g}, {rate:,.1f} captions/s"
                    + (f", reward {scst.stats['reward']:.4f}" if scst is not None else ""),
                    flush=True,
                )
                window_start, window_captions, window_loss, window_steps = time.time(), 0, 0.0, 0

            now = time.time()
            by_steps = bool(config.save_interval_steps) and (
                global_step % config.save_interval_steps == 0
            )
            by_time = bool(config.save_interval_secs) and (
                now - last_save_time >= config.save_interval_secs
            )
            stopping = stop.signum is not None
            if process.world_size > 1:  # every rank saves (and stops) at the same step
                flags = torch.tensor(
                    [float(by_time and process.is_main), float(stopping)], device=process.device
                )
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                by_time, stopping = bool(flags[0]), bool(flags[1])
            if stopping:
                break
            if (by_steps or by_time) and global_step < config.number_of_steps:
                last_checkpoint = save(global_step) or last_checkpoint
                saved_step, last_save_time = global_step, now
        if saved_step != global_step:  # the final save; a signal now waits for it
            last_checkpoint = save(global_step) or last_checkpoint
    if process.is_main:
        assert writer is not None
        writer.close()
    if stopping:
        signum = stop.signum or signal.SIGTERM  # another rank's signal: stop all the same
        name = signal.Signals(signum).name
        _say(process, f"Stopped by {name} at step {global_step}: saved {last_checkpoint}")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
    seconds = time.time() - start_time
    summary = {
        "global_step": global_step,
        "phase": phase,
        "loss": loss_value,
        "seconds": seconds,
        "checkpoint": str(last_checkpoint),
    }
    _say(
        process,
        f"Finished training at step {global_step} (phase {phase}): loss {loss_value:.4f}, "
        f"{seconds:.1f} s; checkpoint {last_checkpoint}",
    )
    return summary


def _image_batches(
    files: list[Path], model_config: ModelConfig, limit: int, batch_size: int = 64
) -> Iterator[torch.Tensor]:
    """Up to `limit` training images with evaluation preprocessing, in batches: the same
    images on every DDP rank (not the rank's share), so that every rank calibrates its
    encoder alike and so finds the same feature cache."""
    dataset = CaptionDataset(
        [str(f) for f in files], model_config.image, training=False, rank=0, world_size=1
    )
    seen = 0
    for batch in make_loader(dataset, batch_size=batch_size, num_workers=0):
        yield batch.images
        seen += len(batch)
        if seen >= limit:
            return


def _sample_feature_stats(
    model: ShowAndTell, files: list[Path], model_config: ModelConfig, process: Process
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature statistics from up to 2,048 training images (when there is no cache)."""
    model.encoder.eval()
    with torch.inference_mode():
        features = torch.cat(
            [
                model.encoder(images.to(process.device)).double().cpu()
                for images in _image_batches(files, model_config, limit=2048)
            ]
        )
    return features.mean(0).float(), features.std(0, unbiased=False).float()
