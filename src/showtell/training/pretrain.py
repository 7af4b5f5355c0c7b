"""Pretraining an encoder as an image classifier: a stand-in for ImageNet weights.

im2txt starts from an Inception v3 trained on ImageNet; phase 1 relies on those
features being good. Where no such weights exist (no download, or the small CNN, for
which nobody publishes any), `showtell pretrain-encoder` trains the encoder on object
labels of the *training* images and writes a state-dict file that
`train --inception_checkpoint_file` loads at step 0, exactly as it would load ImageNet
weights. The demo uses it with the synthetic scenes' object annotations (the colour and
shape in each cell of their 3x3 grid), as a detector-pretrained backbone uses COCO's.

Labels file (JSON): {"slots": S, "classes": C, "labels": {"<image id>": [S class ids]}};
the encoder's label head (a linear layer on its features, a softmax per slot) is trained
with it on the cross-entropy summed over slots. `make-synthetic` writes one
(`annotations/object_labels.json`). The file written holds the backbone's weights under
torchvision-style names and the head's under `label_head.`: a model whose config sets
`encoder_label_head` keeps the head and feeds its class probabilities to the decoder;
any other ignores it.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from showtell.config import ImageConfig, PretrainConfig
from showtell.data.images import BadImageError
from showtell.data.preprocess import ImagePreprocessor, decode_rgb
from showtell.data.records import expand_file_patterns, read_caption_records
from showtell.device import compute_dtype, precision_context
from showtell.encoders import build_encoder, calibrate_batch_norm
from showtell.errors import ShowtellError
from showtell.model import resolve_model_config


@dataclass(frozen=True)
class Labels:
    slots: int  # label positions per image (e.g. the cells of a grid)
    classes: int  # classes per slot (e.g. empty + colour x shape)
    of_image: dict[int, list[int]]  # image id -> `slots` class ids


def load_labels(path: str | Path) -> Labels:
    """Reads a labels file; names the file and the problem when it is malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        slots, classes = int(data["slots"]), int(data["classes"])
        of_image = {int(k): [int(c) for c in v] for k, v in data["labels"].items()}
    except OSError as e:
        raise ShowtellError(f"{path}: cannot read the labels file ({e.strerror})") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ShowtellError(
            f'{path}: not a labels file {{"slots": S, "classes": C, "labels": '
            f'{{"<image id>": [S class ids]}}}} ({type(e).__name__}: {e})'
        ) from e
    for image_id, row in of_image.items():
        if len(row) != slots or not all(0 <= c < classes for c in row):
            raise ShowtellError(
                f"{path}: image {image_id} has labels {row}; expected {slots} ids in [0, {classes})"
            )
    return Labels(slots, classes, of_image)


# Images whose decoded pixels fit in this many bytes are decoded once, up front (the
# demo's 15,000 64x64 scenes: 184 MB); larger sets are decoded every step by workers.
DECODED_BYTES_LIMIT = 1 << 30


class _LabelledImages(Dataset):
    """One (image, labels) per distinct image of the records, with training
    preprocessing: from pixels decoded once when they fit DECODED_BYTES_LIMIT, else
    from the encoded bytes (memory: the JPEG sizes)."""

    def __init__(
        self, items: list[tuple[int, bytes, list[int]]], image: ImageConfig, seed: int
    ) -> None:
        self.items, self.image, self.seed = items, image, seed
        self.preprocess: ImagePreprocessor | None = None
        self.pixels: list[torch.Tensor] | None = []
        total = 0
        for image_id, data, _ in items:
            try:
                self.pixels.append(decode_rgb(data))  # (3, H, W) uint8
            except BadImageError as e:
                raise ShowtellError(f"image {image_id} in the records: {e}") from e
            total += self.pixels[-1].numel()
            if total > DECODED_BYTES_LIMIT:
                self.pixels = None
                break

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.preprocess is None:  # one generator per worker process
            worker = torch.utils.data.get_worker_info()
            offset = worker.id if worker else 0
            self.preprocess = ImagePreprocessor(self.image, training=True, seed=self.seed + offset)
        _, data, labels = self.items[index]
        if self.pixels is not None:
            return self.preprocess.from_uint8(self.pixels[index]), torch.tensor(labels)
        return self.preprocess(data), torch.tensor(labels)


def _labelled_images(files: list[Path], labels: Labels) -> list[tuple[int, bytes, list[int]]]:
    """(image id, encoded image, labels) of the records' distinct labelled images."""
    items, seen, unlabelled = [], set(), 0
    for path in tqdm(files, desc="reading images", unit="shard", file=sys.stderr):
        for record in read_caption_records(path):
            if record.image_id in seen:
                continue
            seen.add(record.image_id)
            row = labels.of_image.get(record.image_id)
            if row is None:
                unlabelled += 1
            else:
                items.append((record.image_id, record.image_data, row))
    if not items:
        raise ShowtellError(
            f"none of the {len(seen):,} images in the records has a label in the labels file"
        )
    if unlabelled:
        print(f"warning: {unlabelled:,} images have no labels and are left out", file=sys.stderr)
    return items


def pretrain_encoder(
    model_overrides: dict[str, Any],
    input_file_pattern: str,
    labels_file: str | Path,
    output_file: str | Path,
    config: PretrainConfig,
) -> dict[str, Any]:
    """Trains the encoder that `model_overrides` (a preset's "model" section) names, with
    its input preprocessing, on the labels; writes its weights (safetensors) to
    `output_file`, beside `<output_file>.json` describing the run. Returns that summary."""
    model_config = resolve_model_config(model_overrides, vocab_size=1)
    encoder_name, image = model_config.encoder, model_config.image
    if config.steps < 1 or config.batch_size < 1:
        raise ShowtellError("pretrain-encoder: --steps and --batch_size must be at least 1")
    files = expand_file_patterns(input_file_pattern)
    labels = load_labels(labels_file)
    items = _labelled_images(files, labels)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    wanted = model_config.encoder_label_head
    if wanted and wanted != (labels.slots, labels.classes):
        raise ShowtellError(
            f"{labels_file}: {labels.slots} slots x {labels.classes} classes, but the model "
            f"config's encoder_label_head is {wanted[0]} x {wanted[1]}"
        )
    # The label head trained here is the one encoder_label_head keeps.
    encoder = build_encoder(encoder_name, label_head=(labels.slots, labels.classes))
    dataset = _LabelledImages(items, image, config.seed)
    workers = 0 if dataset.pixels is not None else config.num_workers  # decoded: no work left
    images = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(items) >= config.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    # Batch-norm statistics from the data before the first step, as for phase 1.
    calibrate_batch_norm(encoder, (x for x, _ in islice(images, 2048 // config.batch_size + 1)))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.learning_rate)
    # Cosine decay to zero: the last steps settle the weights phase 1 will freeze.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.steps)))
    )
    cpu = torch.device("cpu")
    autocast = precision_context(cpu, compute_dtype(cpu, "auto", config.cpu_bf16))
    encoder.train()
    start, step = time.perf_counter(), 0
    recent_loss, recent_right, recent_total = 0.0, 0, 0
    with tqdm(total=config.steps, desc="pretraining encoder", unit="step", file=sys.stderr) as bar:
        while step < config.steps:
            for x, y in images:
                with autocast:
                    logits = encoder.label_logits(encoder.backbone_features(x))  # (B, S, C)
                logits = logits.float()
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / len(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                if step > config.steps - 100:  # the summary's window: the last 100 steps
                    recent_loss += loss.item() * len(x)
                    recent_right += int((logits.argmax(-1) == y).all(-1).sum())
                    recent_total += len(x)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step >= config.steps:
                    break
    seconds = time.perf_counter() - start

    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    # torchvision-style backbone keys (loadable wherever those are), then the label head.
    state = {k.removeprefix("backbone."): v.contiguous() for k, v in encoder.state_dict().items()}
    tmp = output_file.with_name(output_file.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(output_file)
    summary = {
        "encoder": encoder_name,
        "output_file": str(output_file),
        "images": len(items),
        "steps": step,
        "seconds": round(seconds, 1),
        "loss": recent_loss / max(1, recent_total),
        "train_images_all_slots_right": recent_right / max(1, recent_total),
        "config": asdict(config),
        "image": asdict(image),
        "labels_file": str(labels_file),
    }
    output_file.with_name(output_file.name + ".json").write_text(json.dumps(summary, indent=2))
    print(
        f"Pretrained {encoder_name} on {len(items):,} labelled images: {step:,} steps in "
        f"{seconds:.0f} s; last 100 steps: loss {summary['loss']:.4f}, "
        f"all slots right on {summary['train_images_all_slots_right']:.1%} of training images; "
        f"weights -> {output_file}",
        flush=True,
    )
    return summary
