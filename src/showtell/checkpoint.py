"""Self-describing checkpoints, written so that a reader never sees half of one.

A checkpoint is a folder `train_dir/model.ckpt-STEP/` holding
    model.safetensors   every parameter and buffer of the model
    config.json         the resolved ModelConfig, the step, what trained it, and the
                        vocabulary's start, end and unknown words ("vocabulary")
    word_counts.txt     the vocabulary the ids refer to
    train_state.pt      step, optimizer, RNG states and data position of every rank
                        (plain tensors and numbers: loads with weights_only=True)
    manifest.json       the size and SHA-256 of each file above, written last
It is written under a temporary name (`.tmp-NAME-PID@HOST`) and renamed into place;
then the `checkpoint` file (as TensorFlow's) is replaced to name it, and checkpoints
beyond the newest `max_to_keep` are deleted. Listing is by size (cheap): a folder
counts only if its manifest exists and every file has the size the manifest says, so
a torn folder (a crash mid-write, a partial copy) is never listed. The checkpoint
chosen to be loaded (the highest step; the `checkpoint` file is for TensorFlow's
tools) is then verified by content (the hashes): a damaged one is skipped with a
warning naming it, and the newest intact one is used. Manifests of
older versions hold sizes only; those checkpoints still load, checked by size.

`Checkpoint.build_model` is the one place a model is made from a checkpoint (native or
im2txt's), for captioning, evaluation and export alike.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from showtell.config import ModelConfig, model_config_from_dict, to_dict
from showtell.data.vocab import MARKERS, Vocabulary
from showtell.errors import ShowtellError
from showtell.model import ShowAndTell

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "word_counts.txt"
STATE_FILE = "train_state.pt"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "checkpoint"
_NAME = re.compile(r"^model\.ckpt-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"model.ckpt-{step}"


def _manifest(path: Path) -> dict[str, dict[str, Any]]:
    """{file: {"size": n, "sha256": hex}}; a size-only manifest (older versions) gives
    entries without "sha256". Raises OSError or ValueError when unreadable."""
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    files = manifest.get("files", manifest)
    entries = {name: e if isinstance(e, dict) else {"size": e} for name, e in files.items()}
    if not entries or not all(isinstance(e.get("size"), int) for e in entries.values()):
        raise ValueError("no file sizes")
    return entries


def is_complete(path: Path) -> bool:
    """True when the manifest exists and every file it lists has its size (cheap: no
    file is read; `damage` checks the content)."""
    try:
        manifest = _manifest(path)
        return all((path / name).stat().st_size == e["size"] for name, e in manifest.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def damage(path: Path) -> str | None:
    """What is wrong with the checkpoint folder `path`, or None when it is intact: every
    file the manifest lists has its size and (where the manifest has one) its SHA-256."""
    try:
        manifest = _manifest(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_FILE} missing or unreadable"
    for name, entry in manifest.items():
        file = path / name
        try:
            if file.stat().st_size != entry["size"]:
                return f"{name} has {file.stat().st_size} bytes, the manifest says {entry['size']}"
            if "sha256" in entry and _sha256(file) != entry["sha256"]:
                return f"{name}: content differs from the manifest's SHA-256"
        except OSError as e:
            return f"{name}: {e.strerror or e}"
    return None


def checkpoint_folders(train_dir: Path) -> list[tuple[int, Path]]:
    """Every `model.ckpt-STEP` folder in train_dir, intact or not, oldest first."""
    found = []
    if train_dir.is_dir():
        for path in train_dir.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def list_checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in train_dir (by size), oldest first."""
    return [(step, path) for step, path in checkpoint_folders(train_dir) if is_complete(path)]


def latest_checkpoint(path: str | Path, strict: bool = False) -> Path | None:
    """The newest intact checkpoint, verified by content: `path` itself if it is a
    checkpoint folder (an error if damaged), else the train_dir's from the highest step
    down; each damaged one is skipped with a warning. None when there is none; with
    `strict`, an error when checkpoint folders exist but none is intact (rather than
    starting afresh)."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        problem = damage(path)
        if problem is not None:
            raise ShowtellError(f"{path}: damaged checkpoint ({problem})")
        return path
    # By step, not by the `checkpoint` file: a run killed between renaming its newest
    # checkpoint into place and updating that file would otherwise go back a save.
    damaged = []
    for candidate in [p for _, p in reversed(checkpoint_folders(path))]:
        problem = damage(candidate)
        if problem is None:
            return candidate
        damaged.append(f"{candidate.name}: {problem}")
        logger.warning("%s: damaged checkpoint skipped (%s)", candidate, problem)
    if strict and damaged:
        raise ShowtellError(
            f"{path}: no intact checkpoint among {len(damaged)} ({damaged[0]}); "
            "move the damaged ones away or use a new --train_dir"
        )
    return None


# --- temporary folders -------------------------------------------------------------------

_TEMPORARY = re.compile(r"^\.tmp-.+-(\d+)(?:@(.+))?$")


def temporary_name(name: str) -> str:
    """`.tmp-NAME-PID@HOST`: the folder a process writes before renaming it into place;
    its pid and host tell `remove_stale_temporaries` whether its writer still lives."""
    return f".tmp-{name}-{os.getpid()}@{socket.gethostname()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Removes the `.tmp-*` folders in `folder` left by killed writers: those of this
    host (or without a host: older versions) whose process is gone. Returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and (match.group(2) in (None, host)) and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(True)
            removed.append(path)
    return removed


def _write(path: Path, data: bytes) -> dict[str, Any]:
    """Writes `data` durably; returns its manifest entry."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


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
    """Writes a checkpoint atomically, points `checkpoint` at it, prunes old ones.

    Every file is serialized in memory and written here, hashed as it is written, so
    that a failed write (a full disk) is an OSError, not an error deep inside a
    serializer; then the temporary folder is removed and the error is one line."""
    final = train_dir / checkpoint_name(step)
    tmp = train_dir / temporary_name(final.name)
    index_tmp = train_dir / f".{INDEX_FILE}.tmp"
    try:
        train_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        config = {
            "model": to_dict(model_config),
            "global_step": step,
            **info,
            "vocabulary": vocab.markers,  # not in word_counts.txt: beam search needs them
        }
        vocab.save(tmp / VOCAB_FILE)
        buffer = io.BytesIO()
        torch.save(train_state, buffer)
        files = {
            MODEL_FILE: _write(tmp / MODEL_FILE, safetensors_bytes(state)),
            CONFIG_FILE: _write(tmp / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode()),
            VOCAB_FILE: _write(tmp / VOCAB_FILE, (tmp / VOCAB_FILE).read_bytes()),
            STATE_FILE: _write(tmp / STATE_FILE, buffer.getvalue()),
        }
        _write(tmp / MANIFEST_FILE, json.dumps({"format": 2, "files": files}).encode())
        if final.exists():  # the same step saved again (e.g. a final save): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write(index_tmp, (final.name + "\n").encode())
        os.replace(index_tmp, train_dir / INDEX_FILE)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        index_tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = "the disk is full" if full else (e.strerror or str(e))
            raise ShowtellError(f"{train_dir}: cannot save {final.name}: {reason}") from e
        raise
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
        try:
            return load_file(self.path / MODEL_FILE)
        except Exception as e:  # safetensors' own error type for a bad header or data
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ShowtellError(f"{self.path / MODEL_FILE}: unreadable ({first_line})") from e

    def build_model(self, device: torch.device | str = "cpu") -> ShowAndTell:
        """The checkpoint's model with its weights, on `device`, in eval mode."""
        model = ShowAndTell(self.model_config)
        model.load_state_dict(self.model_state())
        return model.to(device).eval()

    def train_state(self) -> dict[str, Any]:
        try:
            return torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle/zip errors; torch's message suggests unsafe loading
            raise ShowtellError(
                f"{self.path / STATE_FILE}: damaged or not a showtell training state "
                f"({type(e).__name__})"
            ) from e


def load_checkpoint(
    path: str | Path, vocab_file: str | Path | Vocabulary | None = None
) -> Checkpoint:
    """Reads a checkpoint folder, or the newest complete one in a train_dir; else an
    im2txt (TensorFlow) checkpoint or train dir, which carries no vocabulary: then
    `vocab_file` is required (`showtell.tf_import.im2txt`)."""
    found = latest_checkpoint(path)
    if found is None:
        from showtell.tf_import.im2txt import find_tf_checkpoint, load_im2txt_checkpoint

        tf_checkpoint = find_tf_checkpoint(path)
        if tf_checkpoint is not None:
            return load_im2txt_checkpoint(tf_checkpoint, vocab_file)
        raise ShowtellError(f"{path}: no complete checkpoint found")
    try:
        config = json.loads((found / CONFIG_FILE).read_text())
        model_config = model_config_from_dict(config["model"])
        saved = config.get("vocabulary", {})  # none in older checkpoints: the default words
        markers = {k: str(saved[k]) for k in MARKERS if k in saved}
    except (ValueError, KeyError, TypeError) as e:
        raise ShowtellError(f"{found / CONFIG_FILE}: not a showtell checkpoint config ({e})") from e
    vocab = Vocabulary.load(found / VOCAB_FILE, **markers)
    return Checkpoint(found, int(config["global_step"]), model_config, vocab, config)
