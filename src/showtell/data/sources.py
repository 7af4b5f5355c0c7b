"""Where captions come from: COCO-format caption files and Karpathy-split JSONs.

Every source is turned into the same thing: named splits ("train", "val", "test"),
each an ordered list of `ImageMetadata`. Order matters, as in im2txt: images keep the
order of the caption file's `images` list, and each image's captions the order of
its `annotations`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from showtell.errors import ShowtellError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageMetadata:
    """One image and its raw (untokenized) captions."""

    image_id: int
    filename: Path
    captions: tuple[str, ...]


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ShowtellError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ShowtellError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ShowtellError(f"{path}: cannot read {what}: {e}") from e


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise ShowtellError(f"{path}: {what} is not a directory")


def load_coco_captions(captions_file: str | Path, image_dir: str | Path) -> list[ImageMetadata]:
    """Images and captions of a COCO-format caption file (`captions_train2014.json`).

    Images without any caption are left out (im2txt asserted there were none).
    """
    captions_file, image_dir = Path(captions_file), Path(image_dir)
    _require_dir(image_dir, "image directory")
    data = _load_json(captions_file, "caption file")
    try:
        images = [(int(x["id"]), str(x["file_name"])) for x in data["images"]]
        captions: dict[int, list[str]] = {}
        for annotation in data["annotations"]:
            captions.setdefault(int(annotation["image_id"]), []).append(str(annotation["caption"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ShowtellError(
            f"{captions_file}: not a COCO caption file (need 'images' with 'id' and "
            f"'file_name', 'annotations' with 'image_id' and 'caption'): {e!r}"
        ) from e
    return [
        ImageMetadata(image_id, image_dir / name, tuple(captions[image_id]))
        for image_id, name in images
        if image_id in captions
    ]


def mscoco_im2txt_splits(
    train_images: list[ImageMetadata], val_images: list[ImageMetadata]
) -> dict[str, list[ImageMetadata]]:
    """im2txt's split of MSCOCO 2014: train = train2014 + the first 85% of val2014,
    val = the next 5%, test = the last 10% (cut points rounded down)."""
    train_cutoff = int(0.85 * len(val_images))
    val_cutoff = int(0.90 * len(val_images))
    return {
        "train": train_images + val_images[:train_cutoff],
        "val": val_images[train_cutoff:val_cutoff],
        "test": val_images[val_cutoff:],
    }


def fraction_splits(
    images: list[ImageMetadata], val_fraction: float, test_fraction: float
) -> dict[str, list[ImageMetadata]]:
    """One caption file cut in file order: train first, then val, then test."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ShowtellError(
            f"--val_fraction {val_fraction} and --test_fraction {test_fraction} must be "
            "in [0, 1) and leave some images for training"
        )
    n = len(images)
    train_cutoff = int((1 - val_fraction - test_fraction) * n)
    val_cutoff = int((1 - test_fraction) * n)
    return {
        "train": images[:train_cutoff],
        "val": images[train_cutoff:val_cutoff],
        "test": images[val_cutoff:],
    }


def load_karpathy_splits(
    split_file: str | Path, image_dir: str | Path
) -> dict[str, list[ImageMetadata]]:
    """Karpathy's split (`dataset_coco.json`, `dataset_flickr8k.json`, ...).

    train = "train" + "restval", then "val" and "test". Images live at
    `image_dir/filepath/filename` (`filepath` is absent in the Flickr files). The
    image id is `cocoid` when present, otherwise `imgid`. Captions are each
    sentence's `raw` text, tokenized here the same way as every other source.
    """
    split_file, image_dir = Path(split_file), Path(image_dir)
    _require_dir(image_dir, "image directory")
    data = _load_json(split_file, "Karpathy split file")
    splits: dict[str, list[ImageMetadata]] = {name: [] for name in SPLITS}
    try:
        for image in data["images"]:
            split = {"restval": "train"}.get(image["split"], image["split"])
            if split not in splits:
                continue
            image_id = int(image["cocoid"] if "cocoid" in image else image["imgid"])
            path = image_dir / image.get("filepath", "") / image["filename"]
            captions = tuple(str(s["raw"]) for s in image["sentences"])
            splits[split].append(ImageMetadata(image_id, path, captions))
    except (KeyError, TypeError, ValueError) as e:
        raise ShowtellError(
            f"{split_file}: not a Karpathy split file (need 'images' with 'split', "
            f"'filename', 'sentences' and 'cocoid' or 'imgid'): {e!r}"
        ) from e
    return splits
