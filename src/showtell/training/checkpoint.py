"""Self-describing checkpoints, written so that a reader never sees half of one.

A checkpoint is a folder `train_dir/model.ckpt-STEP/` holding
    model.safetensors   every parameter and buffer of the model
    config.json         the resolved ModelConfig, the step, and what trained it
    word_counts.txt     the vocabulary the ids refer to
    train_state.pt      step, optimizer, RNG states and data position
                        (plain tensors and numbers: loads with weights_only=True)
    manifest.json       the size of each file above, written last
It is written under a temporary name and renamed into place; then the `checkpoint`
file (as TensorFlow's) is replaced to name it, and checkpoints beyond the newest
`max_to_keep` are deleted. A folder counts as a checkpoint only if its manifest
exists and every file has the size the manifest says, so a torn folder (a crash
mid-write, a partial copy) is never chosen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from showtell.config import ModelConfig, model_config_from_dict, to_dict
from showtell.data.vocab import Vocabulary
from showtell.errors import ShowtellError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "word_counts.txt"
STATE_FILE = "train_state.pt"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "checkpoint"
_NAME = re.compile(r"^model\.ckpt-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"model.ckpt-{step}"


def is_complete(path: Path) -> bool:
    """True when the manifest exists and every file it lists has its size."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        return all((path / name).stat().st_size == size for name, size in manifest.items())
    except (OSError, ValueError, AttributeError):
        return False


def list_checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in train_dir, oldest first."""
    found = []
    if train_dir.is_dir():
        for path in train_dir.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_dir() and is_complete(path):
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint: `path` itself if it is one, else the one the
    train_dir's `checkpoint` file names, else the complete one with the highest step."""
    path = Path(path)
    if is_complete(path):
        return path
    index = path / INDEX_FILE
    if index.is_file():
        named = path / index.read_text().strip()
        if _NAME.match(named.name) and is_complete(named):
            return named
    found = list_checkpoints(path)
    return found[-1][1] if found else None


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    train_dir: Path,
    step: int,
    model: torch.nn.Module,
    model_config: ModelConfig,
    vocab: Vocabulary,
    train_state: dict[str, Any],
    info: dict[str, Any],
    max_to_keep: int,
) -> Path:
    """Writes a checkpoint atomically, points `checkpoint` at it, prunes old ones."""
    train_dir.mkdir(parents=True, exist_ok=True)
    final = train_dir / checkpoint_name(step)
    tmp = train_dir / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp / MODEL_FILE)
    config = {"model": to_dict(model_config), "global_step": step, **info}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    vocab.save(tmp / VOCAB_FILE)
    torch.save(train_state, tmp / STATE_FILE)
    sizes = {
        name: (tmp / name).stat().st_size
        for name in (MODEL_FILE, CONFIG_FILE, VOCAB_FILE, STATE_FILE)
    }
    _fsync_write(tmp / MANIFEST_FILE, json.dumps(sizes).encode())
    if final.exists():  # the same step saved again (e.g. a final save): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    index_tmp = train_dir / f".{INDEX_FILE}.tmp"
    _fsync_write(index_tmp, (final.name + "\n").encode())
    os.replace(index_tmp, train_dir / INDEX_FILE)
    for _, old in list_checkpoints(train_dir)[:-max_to_keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class Checkpoint:
    path: Path
    step: int
    model_config: ModelConfig
    vocab: Vocabulary
    info: dict[str, Any]

    def model_state(self) -> dict[str, torch.Tensor]:
        return load_file(self.path / MODEL_FILE)

    def train_state(self) -> dict[str, Any]:
        return torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a checkpoint folder, or the newest complete one in a train_dir."""
    found = latest_checkpoint(path)
    if found is None:
        raise ShowtellError(f"{path}: no complete checkpoint found")
    try:
        config = json.loads((found / CONFIG_FILE).read_text())
        model_config = model_config_from_dict(config["model"])
    except (ValueError, KeyError) as e:
        raise ShowtellError(f"{found / CONFIG_FILE}: not a showtell checkpoint config ({e})") from e
    return Checkpoint(
        found, int(config["global_step"]), model_config, Vocabulary.load(found / VOCAB_FILE), config
    )
