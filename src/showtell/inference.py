"""Captioning images with a trained checkpoint (the seed's run_inference), batched.

`Captioner` loads a checkpoint (folder or train_dir), preprocesses images as im2txt
did for evaluation (central crop) and runs the batched beam search. `caption_files`
decodes files in parallel and captions them in batches; every file either gets its
captions or fails alone with a reason. Only regular files are read (a FIFO would block
the run forever), and file names are shown with control characters escaped, so that
each message stays one line.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from showtell.checkpoint import Checkpoint, load_checkpoint
from showtell.config import ImageConfig, InferenceConfig
from showtell.config.commands import RunInferenceSettings
from showtell.config.merge import default_of
from showtell.data.images import (
    BadImageError,
    check_max_pixels,
    max_image_pixels,
    printable,
    read_image_file,
)
from showtell.data.preprocess import ImagePreprocessor, decode_rgb
from showtell.data.vocab import Vocabulary
from showtell.device import select_device
from showtell.ensemble import Ensemble, Generator
from showtell.errors import ShowtellError
from showtell.generation import Caption, beam_search
from showtell.model import ShowAndTell


@dataclass
class ImageCaptions:
    """The beam's captions of one image, best first; or why the image failed."""

    file: str
    captions: list[tuple[str, float]]  # (sentence, log-probability)
    error: str | None = None

    def error_message(self) -> str:
        """`FILE: reason`, on one line whatever the file's name holds."""
        return f"{printable(self.file)}: {self.error}"


def checkpoint_paths(checkpoint_path: str | Path | Sequence[str | Path]) -> list[str]:
    """`a,b,c` (or a list) -> the checkpoints of an ensemble; one path -> [it]. A path
    that exists is never split (a folder may have a comma in its name)."""
    if isinstance(checkpoint_path, str | Path):
        text = str(checkpoint_path)
        paths = [text] if os.path.exists(text) else [p.strip() for p in text.split(",")]
        paths = [p for p in paths if p]
    else:
        paths = [str(p) for p in checkpoint_path]
    if not paths:
        raise ShowtellError("--checkpoint_path is empty")
    return paths


class Captioner:
    """A trained model, or an ensemble of several (`a,b,c`: their next-word
    probabilities averaged in one beam search, `showtell.ensemble`), ready to caption
    batches of preprocessed images. An ensemble's checkpoints must share the vocabulary
    and the image preprocessing (ImageConfig); `checkpoint` and `model` are the first's."""

    def __init__(
        self,
        checkpoint_path: str | Path | Sequence[str | Path],
        *,
        vocab_file: str | Path | None = None,
        device: str = "auto",
        beam_size: int = default_of(InferenceConfig, "beam_size"),
        max_caption_length: int = default_of(InferenceConfig, "max_caption_length"),
        length_normalization_factor: float = default_of(
            InferenceConfig, "length_normalization_factor"
        ),
    ) -> None:
        self.checkpoints: list[Checkpoint] = []
        for path in checkpoint_paths(checkpoint_path):
            # vocab_file: required for an im2txt (TensorFlow) checkpoint, which has none.
            checkpoint = load_checkpoint(path, vocab_file=vocab_file)
            if vocab_file:
                given = Vocabulary.load(vocab_file)
                if given.words != checkpoint.vocab.words:
                    raise ShowtellError(
                        f"{vocab_file}: differs from the vocabulary saved with the checkpoint "
                        f"{checkpoint.path} ({len(given)} vs {len(checkpoint.vocab)} ids); "
                        "leave --vocab_file out to use the checkpoint's"
                    )
            if self.checkpoints:
                _check_ensemble_member(self.checkpoints[0], checkpoint)
            self.checkpoints.append(checkpoint)
        self.checkpoint: Checkpoint = self.checkpoints[0]
        self.vocab: Vocabulary = self.checkpoint.vocab
        self.device = select_device(device)
        self.models: list[ShowAndTell] = [c.build_model(self.device) for c in self.checkpoints]
        self.model = self.models[0]
        # One model runs as itself; several as one Ensemble (same results for one).
        self.generator: Generator = self.model if len(self.models) == 1 else Ensemble(self.models)
        self.image_config: ImageConfig = self.checkpoint.model_config.image
        self.beam_size = beam_size
        self.max_caption_length = max_caption_length
        self.length_normalization_factor = length_normalization_factor

    def caption_images(self, images: torch.Tensor) -> list[list[Caption]]:
        """(B, 3, H, W) preprocessed images -> each image's captions (token ids)."""
        with torch.inference_mode():
            state = self.generator.encode(images.to(self.device))
            return beam_search(
                self.generator.step,
                state,
                self.vocab.start_id,
                self.vocab.end_id,
                self.beam_size,
                self.max_caption_length,
                self.length_normalization_factor,
            )

    def sentence(self, caption: Caption) -> str:
        """The words between the start word and the end word (if the caption has one)."""
        ids = list(caption.tokens[1:])
        if ids and ids[-1] == self.vocab.end_id:
            ids = ids[:-1]
        return " ".join(self.vocab.decode(ids))


def _check_ensemble_member(first: Checkpoint, other: Checkpoint) -> None:
    """An ensemble's models must read the same words and the same images."""
    if other.vocab.words != first.vocab.words:
        raise ShowtellError(
            f"{other.path}: its vocabulary differs from {first.path}'s ({len(other.vocab)} vs "
            f"{len(first.vocab)} ids); an ensemble's checkpoints must share one vocabulary"
        )
    if other.model_config.vocab_size != first.model_config.vocab_size:
        raise ShowtellError(
            f"{other.path}: its model predicts {other.model_config.vocab_size} word ids, "
            f"{first.path}'s {first.model_config.vocab_size}; an ensemble needs the same"
        )
    if other.model_config.image != first.model_config.image:
        raise ShowtellError(
            f"{other.path}: its image preprocessing (model.image) differs from {first.path}'s; "
            "an ensemble's checkpoints must preprocess images the same way"
        )


def expand_input_files(patterns: str) -> list[str]:
    """The seed's --input_files: comma-separated files and globs, in the order given
    (each glob's matches sorted). A glob that matches nothing is an error; a plain
    path that does not exist is kept, to fail alone when it is read."""
    files: list[str] = []
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ShowtellError(f"{printable(pattern)}: no files match this pattern")
            files.extend(matches)
        else:
            files.append(pattern)
    if not files:
        raise ShowtellError("--input_files is empty")
    return files


class _ImageFiles(Dataset):
    """Reads (regular files only), decodes (EXIF orientation applied, `max_pixels` at
    most) and preprocesses one file; a failure comes back as its reason instead of an
    exception."""

    def __init__(
        self, files: Sequence[str], image_config: ImageConfig, max_pixels: int | None = None
    ) -> None:
        self.files = files
        self.preprocess = ImagePreprocessor(image_config, training=False)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            data = read_image_file(self.files[index])
            image = decode_rgb(data, apply_exif_orientation=True, max_pixels=self.max_pixels)
            return index, self.preprocess.from_uint8(image), None
        except BadImageError as e:
            return index, None, str(e)


def _collate(items: list) -> list:
    return items


def caption_files(
    captioner: Captioner,
    files: Sequence[str],
    batch_size: int = default_of(RunInferenceSettings, "batch_size"),
    num_workers: int = default_of(RunInferenceSettings, "num_workers"),
    *,
    max_pixels: int | None = None,
) -> Iterator[ImageCaptions]:
    """Captions for each file, in order; decoding runs in `num_workers` processes.
    Images over `max_pixels` (default: `images.max_image_pixels()`) fail alone."""
    max_pixels = check_max_pixels(max_pixels or max_image_pixels())
    loader = DataLoader(
        _ImageFiles(files, captioner.image_config, max_pixels),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    for items in loader:
        good = [(i, image) for i, image, error in items if error is None]
        captions = captioner.caption_images(torch.stack([im for _, im in good])) if good else []
        by_index = {i: c for (i, _), c in zip(good, captions, strict=True)}
        for index, _, error in items:
            if error is not None:
                yield ImageCaptions(files[index], [], error)
            else:
                yield ImageCaptions(
                    files[index],
                    [(captioner.sentence(c), c.logprob) for c in by_index[index]],
                )


def format_captions(result: ImageCaptions) -> str:
    """The seed's output for one image."""
    lines = [f"Captions for image {printable(os.path.basename(result.file))}:"]
    for i, (sentence, logprob) in enumerate(result.captions):
        lines.append(f"  {i}) {sentence} (p={math.exp(logprob):f})")
    return "\n".join(lines)
