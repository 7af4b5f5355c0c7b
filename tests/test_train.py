"""Training end to end on a tiny synthetic data set, through the real entry points."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL as MODEL
from conftest import tiny_train_config
from showtell.checkpoint import (
    INDEX_FILE,
    MODEL_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from showtell.cli import main
from showtell.config import OPTIMIZERS as OPTIMIZER_NAMES
from showtell.errors import ShowtellError
from showtell.logs import configure_console
from showtell.training import step
from showtell.training.train import train


@pytest.fixture(autouse=True)
def console() -> None:
    """The log on the console, as the command line shows it (these tests read it)."""
    configure_console()


@pytest.fixture
def records(synthetic_records: Path) -> Path:
    return synthetic_records


config = tiny_train_config


def weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint_dir / MODEL_FILE)


def test_tiny_model_learns_and_phase_two_follows(records: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    first = train(config(records, run, 1), MODEL)
    later = train(config(records, run, 600), MODEL)
    assert later["loss"] < 0.6 * first["loss"], (first["loss"], later["loss"])
    out = capsys.readouterr().out
    assert "Resuming from" in out and "at step 1" in out

    phase1 = latest_checkpoint(run)
    phase2 = train(
        config(records, run, 606, train_inception=True, train_inception_learning_rate=0.5), MODEL
    )
    assert phase2["global_step"] == 606 and phase2["phase"] == 2
    assert "Phase changes at step 600" in capsys.readouterr().out
    before, after = weights(phase1), weights(Path(phase2["checkpoint"]))
    assert not torch.equal(before["encoder.backbone.0.weight"], after["encoder.backbone.0.weight"])
    state = load_checkpoint(run).train_state()  # loads with weights_only=True
    assert state["global_step"] == 606 and state["train_inception"] is True
    assert (
        len(list_checkpoints(run)) == 3
        and (run / INDEX_FILE).read_text().strip() == "model.ckpt-606"
    )

    # Phase 2 with the encoder's batch norm frozen: its weights train, its running
    # statistics stay (they moved above, with im2txt's batch norm).
    frozen = train(
        config(
            records,
            run,
            609,
            train_inception=True,
            train_inception_learning_rate=0.5,
            freeze_encoder_batch_norm=True,
        ),
        MODEL,
    )
    before, after = after, weights(Path(frozen["checkpoint"]))
    statistics = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(before[k], after[k]) for k in statistics)
    assert not torch.equal(before["encoder.backbone.0.weight"], after["encoder.backbone.0.weight"])


def test_kill_and_resume_continues_exactly(records: Path, tmp_path: Path) -> None:
    # The rate halves every ~12 steps here: the resumed run must follow the schedule.
    straight = train(config(records, tmp_path / "straight", 30, num_epochs_per_decay=0.25), MODEL)

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "showtell",
        "train",
        f"--input_file_pattern={records / 'train-*'}",
        f"--train_dir={killed}",
        "--number_of_steps=100000",
        "--batch_size=16",
        "--num_epochs_per_decay=0.25",
        f"--feature_cache_dir={records.parent / 'feature-cache'}",
        "--num_workers=0",
        "--save_interval_secs=0",
        "--save_interval_steps=4",
        "--seed=3",
        "--encoder=cnn_small",
        "--embedding_size=32",
        "--num_lstm_units=32",
        "--normalize_features=true",
        "--config",
        str(tmp_path / "image.json"),
    ]
    (tmp_path / "image.json").write_text(
        '{"model": {"image": {"resize_height": 36, "resize_width": 36, "height": 32, "width": 32}}}'
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list_checkpoints(killed) if killed.exists() else []  # by size: cheap to poll
        if found and found[-1][0] >= 12:
            break
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = load_checkpoint(killed).step
    assert 12 <= resumed_from < 30

    resumed = train(config(records, killed, 30, num_epochs_per_decay=0.25), MODEL)
    assert resumed["global_step"] == 30
    a, b = weights(Path(straight["checkpoint"])), weights(Path(resumed["checkpoint"]))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # same lr, data order, dropout: same weights


def test_torn_checkpoint_is_never_selected(records: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(records, run, 3, save_interval_steps=1, max_checkpoints_to_keep=2), MODEL)
    assert [step for step, _ in list_checkpoints(run)] == [2, 3]  # older ones pruned
    good = run / "model.ckpt-3"
    torn = run / "model.ckpt-9"
    shutil.copytree(good, torn)
    data = (torn / MODEL_FILE).read_bytes()
    (torn / MODEL_FILE).write_bytes(data[: len(data) // 2])  # half-written
    (run / INDEX_FILE).write_text("model.ckpt-9\n")
    (run / ".tmp-model.ckpt-10-123").mkdir()  # a save that died before its rename
    assert latest_checkpoint(run) == good
    assert load_checkpoint(run).step == 3
    resumed = train(config(records, run, 4), MODEL)
    assert resumed["global_step"] == 4


def test_clear_errors(records: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ShowtellError, match="no files match"):
        train(
            config(records, tmp_path / "r", 1, input_file_pattern=str(tmp_path / "nope-*")), MODEL
        )

    run = tmp_path / "run"
    train(config(records, run, 1), MODEL)
    with pytest.raises(
        ShowtellError, match=r"another configuration \(num_lstm_units: checkpoint 32, asked 64"
    ):
        train(config(records, run, 2), {**MODEL, "num_lstm_units": 64})

    other = tmp_path / "other-records"
    shutil.copytree(records, other)
    (other / "word_counts.txt").write_text("a 10\n<S> 5\n</S> 5")
    with pytest.raises(ShowtellError, match=r"vocabulary .* differs"):
        train(config(other, run, 2), MODEL)

    train(config(records, tmp_path / "fresh", 2, train_inception=True), MODEL)
    assert "warning: phase 2 on an empty train_dir" in capsys.readouterr().err

    code = main(["train", f"--input_file_pattern={tmp_path / 'x-*'}", f"--train_dir={run}"])
    assert code == 2 and "no files match this pattern" in capsys.readouterr().err


def test_optimizer_option_picks_the_update_rule(records: Path, tmp_path: Path) -> None:
    """im2txt's `optimizer` names; Adam's moments are saved and resumed."""
    adam = config(records, tmp_path / "adam", 3, optimizer="Adam", initial_learning_rate=1e-3)
    train(adam, MODEL)
    moments = load_checkpoint(tmp_path / "adam").train_state()["optimizer"]["state"]
    assert moments and all("exp_avg_sq" in s for s in moments.values())
    train(dataclasses.replace(adam, number_of_steps=4), MODEL)  # resumes Adam's state
    assert load_checkpoint(tmp_path / "adam").train_state()["optimizer"]["state"][0]["step"] == 4

    train(config(records, tmp_path / "sgd", 2), MODEL)
    assert load_checkpoint(tmp_path / "sgd").train_state()["optimizer"]["state"] == {}
    with pytest.raises(ShowtellError, match="--optimizer RMSprop: use one of SGD, Momentum"):
        train(config(records, tmp_path / "bad", 1, optimizer="RMSprop"), MODEL)
    assert set(step.OPTIMIZERS) == set(OPTIMIZER_NAMES)  # every accepted name has a rule


def test_cpu_bf16_computes_in_bfloat16_only_where_the_cpu_has_it(
    records: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """--cpu_bf16 (with --precision auto) only where the CPU has bfloat16 instructions;
    an explicit --precision decides alone: fp32 despite --cpu_bf16, bf16 on any CPU."""
    import showtell.device as devices

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return load_checkpoint(run).model_state()

    real_has_bf16 = devices.cpu_has_bf16()
    train(config(records, tmp_path / "warm-up", 1), MODEL)  # builds the feature cache
    train(config(records, tmp_path / "fp32", 3), MODEL)
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    train(config(records, tmp_path / "fallback", 3, cpu_bf16=True), MODEL)
    assert "no bfloat16 instructions; training in float32" in capsys.readouterr().out
    # Forced on a CPU without bfloat16 instructions (this project's AMD machines), oneDNN
    # has no bfloat16 LSTM kernel; PyTorch's own kernels still run the autocast path.
    no_onednn = torch.backends.mkldnn.flags(enabled=False)
    native = nullcontext() if real_has_bf16 else no_onednn
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    with native:
        train(config(records, tmp_path / "bf16", 3, cpu_bf16=True), MODEL)
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: real_has_bf16)
    train(config(records, tmp_path / "bf16-asked", 3, precision="bf16"), MODEL)  # this CPU
    with pytest.raises(ShowtellError, match=r"^--precision fp16: use one of auto, fp32, bf16$"):
        train(config(records, tmp_path / "bad", 3, precision="fp16"), MODEL)

    runs = ("fp32", "fallback", "bf16", "bf16-asked")
    fp32, fallback, bf16, bf16_asked = (weights(tmp_path / r) for r in runs)
    assert all(torch.equal(fp32[k], fallback[k]) for k in fp32)
    lstm = "lstm.weight_hh_l0"
    for run in (bf16, bf16_asked):
        assert all(v.dtype == fp32[k].dtype for k, v in run.items())  # weights stay float32
        assert not torch.equal(run[lstm], fp32[lstm])  # rounded to bfloat16 on the way
        assert torch.allclose(run[lstm], fp32[lstm], atol=0.05)


@pytest.mark.slow
def test_two_process_gloo_ddp(records: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "showtell",
        "train",
        "--config",
        str(tmp_path / "tiny.json"),
        f"--input_file_pattern={records / 'train-*'}",
        f"--train_dir={run}",
        "--number_of_steps=12",
        "--batch_size=8",
        "--num_workers=0",
        "--save_interval_secs=0",
        "--save_interval_steps=6",
        "--log_every_n_steps=6",
        f"--feature_cache_dir={records.parent / 'feature-cache'}",
    ]
    import json

    (tmp_path / "tiny.json").write_text(json.dumps({"model": MODEL}))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 8 x 2 process(es)" in result.stdout
    assert result.stdout.count("Finished training at step 12") == 1  # rank 0 only
    assert result.stdout.count("Feature cache:") == 1  # not rank 1's "reusing" as well
    assert [step for step, _ in list_checkpoints(run)] == [6, 12]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert not list(run.glob(".tmp-*"))

    # Killed after its step-6 checkpoint: resumed, each rank from its own data position
    # and RNG states, it ends with the uninterrupted run's weights.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(run / "model.ckpt-6", killed / "model.ckpt-6")
    command[command.index(f"--train_dir={run}")] = f"--train_dir={killed}"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout
    a, b = weights(run / "model.ckpt-12"), weights(killed / "model.ckpt-12")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_no_feature_cache_runs_the_encoder_every_step(
    records: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    summary = train(config(records, run, 3, feature_cache=False), MODEL)
    assert summary["global_step"] == 3
    assert "images from records" in capsys.readouterr().out
    state = load_checkpoint(run).model_state()
    assert not torch.equal(state["feature_std"], torch.ones_like(state["feature_std"]))
    assert not list((records.parent / "feature-cache").glob("*/.tmp*"))


def test_feature_cache_batches_pair_each_image_with_its_captions(
    tiny_checkpoint: Path, records: Path
) -> None:
    from showtell.data.records import read_caption_records
    from showtell.training.features import FeatureCache

    caches = sorted((records.parent / "feature-cache").glob("*/meta.json"))
    cache = FeatureCache.open(caches[0].parent)  # built by the tiny_checkpoint fixture
    captions: dict[int, set[tuple[int, ...]]] = {}
    pairs = 0
    for shard in sorted(records.glob("train-*")):
        for record in read_caption_records(shard):
            captions.setdefault(record.image_id, set()).add(record.caption_ids)
            pairs += 1
    assert cache.num_pairs == pairs
    batch = cache.batch(np.arange(0, cache.num_pairs, 7))
    for image_id, inputs, targets, mask in zip(
        batch.image_ids.tolist(), batch.input_seqs, batch.target_seqs, batch.mask, strict=True
    ):
        n = int(mask.sum())
        caption = (*inputs[:n].tolist(), int(targets[n - 1]))
        assert caption in captions[image_id]


def test_an_attending_model_trains_on_cached_maps_and_captions(
    records: Path, tmp_path: Path
) -> None:
    """`attention_grid`: the feature cache holds each image's maps after its pooled
    features, the map is standardised per channel, the trained model loads and
    captions, attending, through the inference path, and SCST goes on from it."""
    from showtell.inference import Captioner
    from showtell.training.features import FeatureCache

    attending = {
        **MODEL,
        "encoder": "timm/test_efficientnet",  # tiny, random; stages at 1/8, 1/16, 1/32
        "attention_grid": 2,
    }
    cache_dir = tmp_path / "cache"
    run = tmp_path / "run"
    first = train(config(records, run, 1, feature_cache_dir=str(cache_dir)), attending)
    later = train(config(records, run, 500, feature_cache_dir=str(cache_dir)), attending)
    assert later["loss"] < 0.7 * first["loss"], (first["loss"], later["loss"])

    captioner = Captioner(run)
    model = captioner.model
    positions, channels = model.memory_shape
    assert (positions, channels) == (4, 32 + 48 + 64)
    (meta,) = cache_dir.glob("*/meta.json")
    cache = FeatureCache.open(meta.parent)
    assert cache.features.shape[1] == model.encoder.output_dim == 256 + 4 * 144
    grid_std = model.feature_std[-positions * channels :].view(positions, channels)
    assert torch.equal(grid_std, grid_std[:1].expand(positions, -1))  # one per channel
    captions = captioner.caption_images(torch.rand(3, 3, 32, 32) * 2 - 1)
    assert len(captions) == 3
    assert all(beam and beam[0].tokens[-1] == captioner.vocab.end_id for beam in captions)

    # SCST samples captions from the attending model's state (memory included).
    scst = train(config(records, run, 505, feature_cache_dir=str(cache_dir), scst=True), attending)
    assert scst["global_step"] == 505 and np.isfinite(scst["loss"])
