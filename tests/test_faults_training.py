"""Training under faults: killed runs resume exactly, SIGTERM saves, damaged checkpoints
are skipped or refused, a full disk is one line, and leftovers of killed runs go away.

The reference for "exact" is always an uninterrupted run of the same settings: the
resumed run's final weights must equal its weights bit for bit."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_MODEL as MODEL
from conftest import tiny_train_config as config
from showtell import checkpoint as checkpoints
from showtell.checkpoint import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    damage,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from showtell.cli import main
from showtell.config import model_config_from_dict
from showtell.device import Process
from showtell.errors import ShowtellError
from showtell.logs import configure_console
from showtell.model import ShowAndTell
from showtell.training.batches import RecordBatches
from showtell.training.features import build_feature_cache
from showtell.training.train import train


@pytest.fixture(autouse=True)
def console() -> None:
    """The log on the console, as the command line shows it (these tests read it)."""
    configure_console()


# From images: crops and flips, but no colour distortion (torchvision's hue costs 20 ms
# an image here); the distortions all draw from the same per-example seed.
IMAGES_MODEL = {**MODEL, "image": {**MODEL["image"], "colour_distortion": False}}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run).model_state()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def newest_step(run: Path) -> int:
    """The newest checkpoint's step, by size only (cheap enough to poll)."""
    found = list_checkpoints(run) if run.exists() else []
    return found[-1][0] if found else -1


def cli_train(records: Path, run: Path, tmp_path: Path, *flags: str) -> subprocess.Popen:
    """`python -m showtell train` on the tiny model, as a user (or a scheduler) runs it."""
    (tmp_path / "tiny.json").write_text(json.dumps({"model": IMAGES_MODEL}))
    command = [
        *(sys.executable, "-m", "showtell", "train", "--config", str(tmp_path / "tiny.json")),
        f"--input_file_pattern={records / 'train-*'}",
        f"--train_dir={run}",
        f"--feature_cache_dir={records.parent / 'feature-cache'}",
        *("--number_of_steps=100000", "--save_interval_secs=0", "--seed=3"),
        *flags,
    ]
    # As many threads as the in-process runs: a thread count changes the sums' order.
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_checkpoint(process: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.time() + 180
    while newest_step(run) < step:
        assert process.poll() is None, process.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def trained(synthetic_records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train_dir with checkpoints at steps 1 and 2 (tests work on copies)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(config(synthetic_records, run, 2, save_interval_steps=1), MODEL)
    return run


def copy_run(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


# --- resume exactly ----------------------------------------------------------------------


@pytest.mark.slow
def test_phase_two_from_images_survives_sigkill_and_sigterm_exactly(
    synthetic_records: Path, tmp_path: Path
) -> None:
    """Phase 2 (images decoded and distorted by 2 DataLoader workers, shuffle buffer):
    killed with SIGKILL after a checkpoint, rerun, stopped with SIGTERM, rerun to the
    end. (Epoch boundaries: `test_record_stream_position_restores_the_rest_of_the_epoch`.)"""
    steps, phase2 = 16, dict(train_inception=True, num_workers=2)
    straight = train(
        config(synthetic_records, tmp_path / "straight", steps, **phase2), IMAGES_MODEL
    )

    run = tmp_path / "run"
    flags = ("--train_inception=true", "--num_workers=2", "--batch_size=16")
    killed = cli_train(synthetic_records, run, tmp_path, *flags, "--save_interval_steps=2")
    wait_for_checkpoint(killed, run, 4)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    first = newest_step(run)

    stopped = cli_train(synthetic_records, run, tmp_path, *flags, "--save_interval_steps=2")
    wait_for_checkpoint(stopped, run, first + 2)
    stopped.send_signal(signal.SIGTERM)
    out = stopped.communicate(timeout=120)[0].decode()
    assert stopped.returncode == 143, out[-3000:]
    assert f"Resuming from {run / f'model.ckpt-{first}'} at step {first}" in out
    match = re.search(r"Stopped by SIGTERM at step (\d+): saved (\S+)", out)
    assert match, out[-3000:]
    second = int(match.group(1))
    assert Path(match.group(2)) == run / f"model.ckpt-{second}" and newest_step(run) == second
    assert damage(run / f"model.ckpt-{second}") is None
    assert first + 2 <= second < steps - 3, (first, second)

    resumed = train(config(synthetic_records, run, steps, **phase2), IMAGES_MODEL)
    assert resumed["global_step"] == steps
    assert_same_weights(Path(straight["checkpoint"]), Path(resumed["checkpoint"]))


@pytest.mark.slow
def test_no_feature_cache_resumes_exactly_with_workers(
    synthetic_records: Path, tmp_path: Path
) -> None:
    """Phase 1 from images (`--no-feature-cache`), 2 workers: a run killed right after
    its checkpoint at an odd step (the other worker is due next) is resumed."""
    settings = dict(feature_cache=False, num_workers=2, batch_size=8, save_interval_steps=3)
    straight = tmp_path / "straight"
    train(config(synthetic_records, straight, 8, **settings), IMAGES_MODEL)
    (tmp_path / "killed").mkdir()
    shutil.copytree(straight / "model.ckpt-3", tmp_path / "killed" / "model.ckpt-3")
    resumed = train(config(synthetic_records, tmp_path / "killed", 8, **settings), IMAGES_MODEL)
    assert_same_weights(straight / "model.ckpt-8", Path(resumed["checkpoint"]))


@pytest.mark.slow
def test_building_the_feature_cache_and_reusing_it_train_the_same(
    synthetic_records: Path, tmp_path: Path
) -> None:
    """Building once drew the DataLoader's seed from the global RNG (dropout's): the run
    that built the cache trained differently from every later one."""
    cache = tmp_path / "new-cache"
    built = config(synthetic_records, tmp_path / "built", 6, feature_cache_dir=str(cache))
    reused = config(synthetic_records, tmp_path / "reused", 6, feature_cache_dir=str(cache))
    train(built, MODEL)
    train(reused, MODEL)
    assert len(list(cache.glob("*/meta.json"))) == 1
    assert_same_weights(tmp_path / "built", tmp_path / "reused")


@pytest.mark.slow
def test_record_stream_position_restores_the_rest_of_the_epoch(synthetic_records: Path) -> None:
    """The data position of DDP rank 1 of 2 with 2 DataLoader workers, saved after any
    batch (mid-epoch, in the tail where one worker has run dry, at the epoch's end)
    and restored in a new stream, gives the same batches, images included."""
    model_config = model_config_from_dict(IMAGES_MODEL)
    settings = config(synthetic_records, Path("unused"), 1, num_workers=2, batch_size=32)
    process = Process(1, 2, torch.device("cpu"))

    def take(stream: RecordBatches, n: int) -> list[tuple[list[int], float]]:
        batches = iter(stream)
        return [
            (b.image_ids.tolist(), float(b.images.double().sum()))
            for b in (next(batches) for _ in range(n))
        ]

    files = sorted(synthetic_records.glob("train-*"))
    reference = RecordBatches(files, model_config, settings, process)
    states, expected, batches = [], [], iter(reference)
    while len(states) < 4 or states[-4]["epoch"] == 0:  # into epoch 1, 3 batches deep
        b = next(batches)
        expected.append((b.image_ids.tolist(), float(b.images.double().sum())))
        states.append(reference.state())
    end = [s["epoch"] for s in states].index(1) - 1  # the last batch of epoch 0
    assert states[end]["consumed"] != states[end - 1]["consumed"]
    for k in sorted({0, 1, 2, end - 1, end}):
        stream = RecordBatches(files, model_config, settings, process)
        stream.restore(json.loads(json.dumps(states[k])))  # as saved: plain numbers
        assert take(stream, 3) == expected[k + 1 : k + 4], k


# --- SIGTERM / SIGINT --------------------------------------------------------------------


def test_signals_during_a_save_neither_tear_it_nor_are_lost(
    synthetic_records: Path, trained: Path, tmp_path: Path, monkeypatch
) -> None:
    """SIGTERM then SIGINT arrive while the step-4 checkpoint is being written: it is
    finished, the loop stops at the next step boundary, saves that step and exits 143."""
    import showtell.training.state as training

    real_save = training.save_checkpoint

    def save_under_fire(train_dir: Path, step: int, *args, **kwargs) -> Path:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(train_dir, step, *args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", save_under_fire)
    run = copy_run(trained, tmp_path)  # at step 2
    with pytest.raises(SystemExit) as exit_info:
        train(config(synthetic_records, run, 100, save_interval_steps=4), MODEL)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert [step for step, _ in list_checkpoints(run)] == [1, 2, 4, 5]
    assert all(damage(run / f"model.ckpt-{s}") is None for s in (4, 5))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
    assert load_checkpoint(run).train_state()["global_step"] == 5


# --- damaged checkpoints -----------------------------------------------------------------


@pytest.fixture
def two_checkpoints(trained: Path, tmp_path: Path) -> Path:
    run = copy_run(trained, tmp_path)
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    return run


def flip_bytes(path: Path, offset: int, count: int = 8) -> None:
    """Same-size corruption: `count` bytes at `offset` (negative: from the end) inverted."""
    data = bytearray(path.read_bytes())
    start = offset % len(data)
    data[start : start + count] = bytes(255 - b for b in data[start : start + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "file, offset",
    [(MODEL_FILE, 0), (MODEL_FILE, -64), (STATE_FILE, 0)],
    ids=["model-header", "model-weights", "train-state"],
)
def test_damaged_newest_checkpoint_is_skipped_for_the_newest_good_one(
    two_checkpoints: Path, synthetic_records: Path, capsys, file: str, offset: int
) -> None:
    run = two_checkpoints
    flip_bytes(run / "model.ckpt-2" / file, offset)
    assert latest_checkpoint(run) == run / "model.ckpt-1"
    err = capsys.readouterr().err
    assert f"warning: {run / 'model.ckpt-2'}: damaged checkpoint skipped ({file}: " in err
    with pytest.raises(ShowtellError, match=r"model\.ckpt-2: damaged checkpoint \(.*SHA-256"):
        load_checkpoint(run / "model.ckpt-2")  # named explicitly: refused, not replaced
    summary = train(config(synthetic_records, run, 3), MODEL)
    assert f"Resuming from {run / 'model.ckpt-1'} at step 1" in capsys.readouterr().out
    assert summary["global_step"] == 3 and all(
        torch.isfinite(v).all() for v in weights(run).values()
    )


def test_train_refuses_a_train_dir_whose_checkpoints_are_all_damaged(
    two_checkpoints: Path, synthetic_records: Path, capsys
) -> None:
    run = two_checkpoints
    torn = run / "model.ckpt-1" / MODEL_FILE
    torn.write_bytes(torn.read_bytes()[:100])  # torn: short
    flip_bytes(run / "model.ckpt-2" / MODEL_FILE, -64)  # same size, other content
    code = main(
        ["train", f"--input_file_pattern={synthetic_records / 'train-*'}", f"--train_dir={run}"]
    )
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {run}: no intact checkpoint among 2 (model.ckpt-2: {MODEL_FILE}: content "
        "differs from the manifest's SHA-256); move the damaged ones away or use a new "
        "--train_dir"
    ]
    assert "Traceback" not in err
    assert sorted(p.name for p in run.glob("model.ckpt-*")) == ["model.ckpt-1", "model.ckpt-2"]


def test_size_only_manifests_of_older_versions_still_load(two_checkpoints: Path) -> None:
    run = two_checkpoints
    for step in (1, 2):
        folder = run / f"model.ckpt-{step}"
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        (folder / MANIFEST_FILE).write_text(json.dumps({n: e["size"] for n, e in files.items()}))
    assert load_checkpoint(run).step == 2 and weights(run)

    # Without hashes, same-size garbage in the training state is found when it is read:
    # one line naming the file, never torch's advice to load it unsafely.
    state = run / "model.ckpt-2" / STATE_FILE
    state.write_bytes(b"\x80\x04garbage" + bytes(state.stat().st_size - 9))
    with pytest.raises(ShowtellError) as error:
        load_checkpoint(run).train_state()
    message = str(error.value)
    assert message.startswith(f"{state}: damaged or not a showtell training state")
    assert "weights_only" not in message and "\n" not in message


def test_unreadable_safetensors_is_one_line(two_checkpoints: Path) -> None:
    folder = two_checkpoints / "model.ckpt-2"
    # A size-only manifest (an older version's) that agrees with a garbage file.
    (folder / MANIFEST_FILE).write_text(json.dumps({MODEL_FILE: 5}))
    (folder / MODEL_FILE).write_bytes(b"\xff" * 5)
    with pytest.raises(ShowtellError, match=rf"^{re.escape(str(folder / MODEL_FILE))}: unreadable"):
        load_checkpoint(folder).model_state()


# --- full disk and leftovers -------------------------------------------------------------


def test_full_disk_is_one_line_and_leaves_no_temporary_folder(
    synthetic_records: Path, trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = copy_run(trained, tmp_path)  # at step 2
    real_write = checkpoints._write

    def full(path: Path, data: bytes) -> dict:
        if path.name == MODEL_FILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(checkpoints, "_write", full)
    (tmp_path / "tiny.json").write_text(json.dumps({"model": MODEL}))
    code = main(
        [
            "train",
            f"--config={tmp_path / 'tiny.json'}",
            f"--input_file_pattern={synthetic_records / 'train-*'}",
            f"--train_dir={run}",
            "--number_of_steps=3",
            "--seed=3",
            "--num_workers=0",
            f"--feature_cache_dir={synthetic_records.parent / 'feature-cache'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == f"error: {run}: cannot save model.ckpt-3: the disk is full"
    assert not list(run.glob(".tmp-*")) and not list(run.glob(".checkpoint.tmp"))
    assert load_checkpoint(run).step == 2  # the index still names the last good one

    # The feature cache: refused before a memory map could fault on a full disk.
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=1, used=1, free=0))
    cache = tmp_path / "cache"
    model = ShowAndTell(model_config_from_dict(MODEL))
    files = sorted(synthetic_records.glob("train-*"))
    with pytest.raises(ShowtellError, match="bytes of features do not fit on the disk"):
        build_feature_cache(files, model.encoder, model.config.image, cache, torch.device("cpu"))
    assert cache.is_dir() and not list(cache.iterdir())


def test_leftovers_of_killed_runs_are_removed_and_live_ones_kept(
    synthetic_records: Path, trained: Path, tmp_path: Path
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    host, live = socket.gethostname(), os.getpid()
    run, cache = copy_run(trained, tmp_path), tmp_path / "cache"
    shutil.copytree(synthetic_records.parent / "feature-cache", cache)  # reused, not rebuilt
    names = {
        f".tmp-model.ckpt-5-{dead.pid}@{host}": False,  # killed here: removed
        f".tmp-model.ckpt-6-{dead.pid}": False,  # an older version's name: removed
        f".tmp-model.ckpt-7-{live}@{host}": True,  # a live writer: kept
        f".tmp-model.ckpt-8-{dead.pid}@elsewhere.example": True,  # another host's: kept
    }
    for folder in (run, cache):
        for name in names:
            (folder / name).mkdir(parents=True)
            (folder / name / "partial").write_bytes(b"x")
    train(config(synthetic_records, run, 3, feature_cache_dir=str(cache)), MODEL)
    for folder in (run, cache):
        kept = {p.name for p in folder.glob(".tmp-*")}
        assert kept == {name for name, stays in names.items() if stays}, folder
