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

The parts: the phase and the step in training/step.py, the batch streams in
training/batches.py, RNG states and stop signals in training/state.py, the progress
log in training/progress.py; here, the set-up (`_start`, `_data`) and the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import signal
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from showtell.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
)
from showtell.config import ModelConfig, ModelRequest, Source, TrainConfig
from showtell.data.build import build_markers
from showtell.data.records import expand_file_patterns
from showtell.data.vocab import Vocabulary
from showtell.device import Process, compute_dtype, precision_context, setup_process
from showtell.encoder_weights import load_pretrained
from showtell.encoders import calibrate_batch_norm
from showtell.errors import ShowtellError
from showtell.model import ShowAndTell, model_request
from showtell.tf_import.reader import find_tf_checkpoint
from showtell.training.batches import (
    Batches,
    CachedBatches,
    RecordBatches,
    image_batches,
    sample_feature_stats,
)
from showtell.training.features import FeatureCache, build_feature_cache, default_cache_root
from showtell.training.progress import ProgressLog
from showtell.training.scheduled_sampling import sampling_probability
from showtell.training.scst import ImageRows, SelfCritical
from showtell.training.state import Saver, StopSignals, rank_state, set_rng_state
from showtell.training.step import Phase, TrainStep

logger = logging.getLogger(__name__)


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


def train(
    config: TrainConfig, model: ModelRequest | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Runs training until `config.number_of_steps`; returns a summary. `model`: the
    configuration asked for (`model.model_request`; a mapping, as a preset's model
    section, is read by it here, once)."""
    if not isinstance(model, ModelRequest):
        model = model_request((Source("model settings", "model"), model or {}))
    process = setup_process(config.device)
    try:
        return _train(config, model, process)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --- set-up ------------------------------------------------------------------------------


@dataclass
class _Start:
    """Where a run starts: a model, and when resumed, the checkpoint it came from."""

    model: ShowAndTell
    model_config: ModelConfig
    checkpoint: Checkpoint | None  # None: a new model
    checkpoint_path: Path | None
    state: dict[str, Any] | None  # the checkpoint's training state
    global_step: int


def _start(
    config: TrainConfig,
    request: ModelRequest,
    vocab: Vocabulary,
    files: list[Path],
    process: Process,
) -> _Start:
    """Resume from the train_dir's newest checkpoint (showtell's or im2txt's), or
    initialise a new model (the encoder's weights file; batch-norm statistics measured
    on training images when the encoder is random)."""
    train_dir = Path(config.train_dir)
    if process.is_main:
        for leftover in remove_stale_temporaries(train_dir):
            logger.info("Removed %s, left by a run that was killed while saving", leftover.name)
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
        conflicts = request.differences(checkpoint.model_config)
        if conflicts:
            raise ShowtellError(
                f"{train_dir} holds a model of another configuration ("
                + "; ".join(conflicts)
                + "): use a new --train_dir"
            )
        model_config = checkpoint.model_config
        model = ShowAndTell(model_config)
        model.load_state_dict(checkpoint.model_state())
        state = checkpoint.train_state()
        global_step = int(state["global_step"])
        logger.info("Resuming from %s at step %d", checkpoint.path, global_step)
        return _Start(model, model_config, checkpoint, checkpoint_path, state, global_step)

    model_config = dataclasses.replace(request.config, vocab_size=len(vocab))
    model = ShowAndTell(model_config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = load_pretrained(model.encoder, config.inception_checkpoint_file)
    if process.is_main:  # the same on every rank: said once
        for w in caught:
            logger.warning("%s", w.message)
        if config.train_inception and source.startswith("random"):
            logger.warning("phase 2 on an empty train_dir: the encoder is random")
    logger.info("Initialising a new model in %s (encoder: %s)", train_dir, source)
    uses_stages = model_config.multiscale_features or model_config.attention_grid
    if uses_stages and not model_config.normalize_features:
        logger.warning(
            "--multiscale_features or --attention_grid without --normalize_features: the "
            "stages' scales differ by orders of magnitude, and the decoder may learn to "
            "ignore the image"
        )
    if source.startswith("random"):
        used = calibrate_batch_norm(model.encoder, image_batches(files, model_config, limit=2048))
        logger.info("Calibrated the random encoder's batch-norm on %s training images", f"{used:,}")
    return _Start(model, model_config, None, None, None, 0)


def _data(
    config: TrainConfig,
    phase: Phase,
    start: _Start,
    files: list[Path],
    vocab: Vocabulary,
    process: Process,
    dtype: torch.dtype,
) -> tuple[Batches, SelfCritical | None]:
    """The phase's batches (the feature cache, built or found, or images from the
    records) and, for SCST, its reward; a new model's feature normalisation."""
    model, model_config = start.model, start.model_config
    cache: FeatureCache | None = None
    if phase.cached_features:
        root = Path(config.feature_cache_dir) if config.feature_cache_dir else default_cache_root()

        def find_or_build(workers: int) -> FeatureCache:
            return build_feature_cache(
                files, model.encoder, model_config.image, root, process.device, workers, dtype=dtype
            )

        if process.is_main:
            cache = find_or_build(config.num_workers)
        if process.world_size > 1:
            dist.barrier()  # rank 0 has built it; the others find it
            if not process.is_main:
                cache = find_or_build(0)
    scst = None
    batches: Batches
    if phase.scst:  # batches of images, not pairs; the reward (training/scst.py)
        assert cache is not None
        scst = SelfCritical(model, cache, vocab, config, Path(config.train_dir), process.is_main)
        batches = CachedBatches(ImageRows(cache), config.batch_size, process, config.seed)
    elif cache is not None:
        batches = CachedBatches(cache, config.batch_size, process, config.seed)
    else:
        batches = RecordBatches(files, model_config, config, process)

    if start.checkpoint is None and model_config.normalize_features:
        mean, std = (
            cache.feature_stats()
            if cache is not None
            else sample_feature_stats(model, files, model_config, process.device)
        )
        model.set_feature_statistics(mean, std)
    return batches, scst


def _train(config: TrainConfig, request: ModelRequest, process: Process) -> dict[str, Any]:
    if not config.train_dir:
        raise ShowtellError("train needs --train_dir")
    if not config.input_file_pattern:
        raise ShowtellError("train needs --input_file_pattern")
    phase = Phase.from_config(config)
    dtype = compute_dtype(process.device, config.precision, config.cpu_bf16)  # checks it
    files = expand_file_patterns(config.input_file_pattern)
    vocab = find_vocabulary(config, files)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    start = _start(config, request, vocab, files, process)
    model = start.model
    model.set_train_encoder(phase.train_encoder, config.freeze_encoder_batch_norm)
    model.to(process.device)
    if start.global_step >= config.number_of_steps:
        logger.info("Step %d already reaches --number_of_steps; nothing to do", start.global_step)
        return {"global_step": start.global_step, "checkpoint": str(start.checkpoint_path)}

    batches, scst = _data(config, phase, start, files, vocab, process, dtype)
    optimizer = phase.optimizer_for(
        model, phase.learning_rate(start.global_step, config, batches.steps_per_epoch)
    )
    if start.state is not None:
        if phase.continues(start.state) and "optimizer" in start.state:  # none in im2txt's
            optimizer.load_state_dict(start.state["optimizer"])
            mine = rank_state(start.state, process)
            batches.restore(mine["data"])
            set_rng_state(mine["rng"])
        else:
            logger.info(
                "Phase changes at step %d: train_inception=%s%s",
                start.global_step,
                phase.train_encoder,
                ", scst=True" if phase.scst else "",
            )

    network: torch.nn.Module = model
    if process.world_size > 1:
        network = DistributedDataParallel(
            model, device_ids=[process.device.index] if process.device.type == "cuda" else None
        )
    if config.compile:
        network = torch.compile(network)
    step = TrainStep(
        model,
        optimizer,
        phase,
        config.clip_gradients,
        network=network,
        autocast=precision_context(process.device, dtype),
        scst=scst,
    )
    saver = Saver(config, phase, model, start.model_config, vocab, optimizer, batches, process)
    if start.checkpoint is not None:
        saver.last, saver.step = start.checkpoint_path, start.global_step
    logger.info(
        "Training phase %s from step %d to %d: %s, batch %d x %d process(es), device %s",
        phase.name,
        start.global_step,
        config.number_of_steps,
        "cached features" if phase.cached_features else "images from records",
        config.batch_size,
        process.world_size,
        process.device,
    )
    return _loop(config, phase, step, batches, saver, start.global_step, process)


# --- the loop ----------------------------------------------------------------------------


def _loop(
    config: TrainConfig,
    phase: Phase,
    step: TrainStep,
    batches: Batches,
    saver: Saver,
    global_step: int,
    process: Process,
) -> dict[str, Any]:
    """Steps until `--number_of_steps` or a stop signal, logging and saving on the way."""
    progress = None
    if process.is_main:
        progress = ProgressLog(Path(config.train_dir), config.log_every_n_steps, process.world_size)
    step.model.train()
    start_time, loss, stopping = time.time(), float("nan"), False
    stream = iter(batches)
    with StopSignals() as stop:
        while global_step < config.number_of_steps:
            batch = next(stream).to(process.device, non_blocking=True)
            lr = phase.learning_rate(global_step, config, batches.steps_per_epoch)
            sampling = sampling_probability(global_step, config)
            result = step(batch, lr, sampling)
            global_step += 1
            loss = result.loss.item()
            if not math.isfinite(loss):
                raise ShowtellError(
                    f"loss became {loss} at step {global_step}; lower the learning rate"
                )
            if progress is not None:
                progress.step(global_step, result, loss, lr, _scalars(config, sampling, step))
            save_now, stopping = saver.due(global_step, stop.signum is not None)
            if stopping:
                break
            if save_now and global_step < config.number_of_steps:
                saver.save(global_step)
        if saver.step != global_step:  # the final save; a signal now waits for it
            saver.save(global_step)
    if progress is not None:
        progress.close()
    if stopping:
        signum = stop.signum or signal.SIGTERM  # another rank's signal: stop all the same
        name = signal.Signals(signum).name
        logger.info("Stopped by %s at step %d: saved %s", name, global_step, saver.last)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
    seconds = time.time() - start_time
    logger.info(
        "Finished training at step %d (phase %s): loss %.4f, %.1f s; checkpoint %s",
        global_step,
        phase.name,
        loss,
        seconds,
        saver.last,
    )
    return {
        "global_step": global_step,
        "phase": phase.name,
        "loss": loss,
        "seconds": seconds,
        "checkpoint": str(saver.last),
    }


def _scalars(config: TrainConfig, sampling: float, step: TrainStep) -> dict[str, float]:
    """The phase's own TensorBoard scalars: scheduled sampling's, SCST's."""
    scalars = {}
    if config.scheduled_sampling != "off":
        scalars["scheduled_sampling/probability"] = sampling
    for name, value in (step.scst.stats if step.scst is not None else {}).items():
        scalars[f"scst/{name}"] = value
    return scalars
