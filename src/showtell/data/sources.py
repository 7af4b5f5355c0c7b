"""Where captions come from: COCO-format caption files and Karpathy-split JSONs.

Every source is turned into the same thing: named splits ("train", "val", "test"),
each an ordered list of `ImageMetadata`. Order matters, as in im2txt: images keep the
order of the caption file's `images` list, and each image's captions the order of
its `annotations`.

A caption file is checked whole before any work starts, and a problem in it is one
error naming the file, the first entry with the problem and how many have it: a
caption that is not a string, an image id that is not an integer or is used twice,
an annotation for an image id the `images` list lacks, a file name that is empty,
absolute or climbs out of the image directory with `..`. (Symbolic links inside the
image directory are followed wherever they point: the directory is the user's own,
the caption file may come from anywhere.) A caption file most of whose images are
missing from the image directory (the wrong directory, or train and val swapped) is
an error too; a few missing files are skipped and reported while the shards are
written, like any unreadable image.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from showtell.data.images import printable
from showtell.errors import ShowtellError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageMetadata:
    """One image and its raw (untokenized) captions."""

    image_id: int
    filename: Path
    captions: tuple[str, ...]


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ShowtellError(f"{printable(str(path))}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ShowtellError(
            f"{printable(str(path))}: not valid JSON ({e.msg} at line {e.lineno})"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ShowtellError(f"{printable(str(path))}: cannot read {what}: {e}") from e


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise ShowtellError(f"{printable(str(path))}: {what} is not a directory")


def _show(value: Any) -> str:
    """A JSON value as it appears in the file, on one line and cut short."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Problems:
    """What is wrong with one caption file: the first entry of each kind of problem and
    how many entries have it. Collected over the whole file, raised as one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def add(self, kind: str, detail: str) -> None:
        self.first.setdefault(kind, detail)
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def raise_first(self) -> None:
        """Raises the first kind of problem found, if any."""
        if not self.first:
            return
        kind, detail = next(iter(self.first.items()))
        count = self.counts[kind]
        more = f" ({count - 1:,} more entries have this problem)" if count > 1 else ""
        raise ShowtellError(f"{printable(str(self.path))}: {detail}{more}")


def _image_id(value: Any) -> int | None:
    """An image id as the JSON gives it: an integer, or a string of digits; else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _relative_name(*parts: Any) -> str | None:
    """Why a file name from a caption file may not be used under the image directory,
    or None if it may: it must be a non-empty relative path that stays inside."""
    if not all(isinstance(p, str) for p in parts):
        return f"is {_show(next(p for p in parts if not isinstance(p, str)))}, not a string"
    name = "/".join(p for p in parts if p)
    if not name.strip() or name.endswith("/"):
        return "is empty" if not name.strip() else "names a directory"
    if "\0" in name:
        return "contains a NUL character"
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or name[1:3] in (":/", ":\\"):
        return "is an absolute path"
    if ".." in path.parts or ".." in name.split("\\"):
        return "leaves the image directory (..)"
    return None


def _check_unique(problems: _Problems, seen: dict[int, str], image_id: int, where: str) -> None:
    if image_id in seen:
        problems.add("duplicate", f"{where}: image id {image_id} is used by {seen[image_id]} too")
    else:
        seen[image_id] = where


def _warn_uncaptioned(path: Path, uncaptioned: list[str]) -> None:
    if uncaptioned:
        logger.warning(
            "%s: %s images have no caption and are left out (the first: %s)",
            printable(str(path)),
            f"{len(uncaptioned):,}",
            uncaptioned[0],
        )


def require_images_present(images: list[ImageMetadata], source_file: Path, image_dir: Path) -> None:
    """An error if most of a caption file's images are missing from its image directory:
    the directory is wrong (or train and val are swapped), and building would write
    nothing, or little, after hours of work. A few missing files are left to the
    writers, which skip and report them like any unreadable image."""
    missing = [image.filename for image in images if not os.path.exists(image.filename)]
    if images and 2 * len(missing) > len(images):
        raise ShowtellError(
            f"{printable(str(source_file))}: {len(missing):,} of {len(images):,} images are "
            f"not in {printable(str(image_dir))} (the first: "
            f"{printable(str(missing[0].relative_to(image_dir)))}); is it the right image "
            "directory for this caption file?"
        )


def load_coco_captions(captions_file: str | Path, image_dir: str | Path) -> list[ImageMetadata]:
    """Images and captions of a COCO-format caption file (`captions_train2014.json`).

    Images without any caption are left out with a warning (im2txt asserted there were
    none). Everything else that is wrong is an error (see the module's docstring).
    """
    captions_file, image_dir = Path(captions_file), Path(image_dir)
    _require_dir(image_dir, "image directory")
    data = _load_json(captions_file, "caption file")
    shape_error = ShowtellError(
        f"{printable(str(captions_file))}: not a COCO caption file (need 'images', a list of "
        "objects with 'id' and 'file_name', and 'annotations', a list of objects with "
        "'image_id' and 'caption')"
    )
    if not (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    ):
        raise shape_error
    problems = _Problems(captions_file)
    images: list[tuple[int, str]] = []
    seen: dict[int, str] = {}
    for k, entry in enumerate(data["images"]):
        where = f"images[{k}]"
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            problems.add("shape", f"{where} is not an object with 'id' and 'file_name'")
            continue
        image_id = _image_id(entry["id"])
        if image_id is None:
            problems.add("id", f"{where}: id is {_show(entry['id'])}, not an integer")
            continue
        _check_unique(problems, seen, image_id, where)
        reason = _relative_name(entry["file_name"])
        if reason is not None:
            problems.add("name", f"{where} (id {image_id}): file_name {reason}")
            continue
        images.append((image_id, entry["file_name"]))
    captions: dict[int, list[str]] = {}
    for k, entry in enumerate(data["annotations"]):
        where = f"annotations[{k}]"
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            problems.add("shape", f"{where} is not an object with 'image_id' and 'caption'")
            continue
        image_id = _image_id(entry["image_id"])
        if image_id is None:
            problems.add("id", f"{where}: image_id is {_show(entry['image_id'])}, not an integer")
            continue
        if not isinstance(entry["caption"], str):
            problems.add(
                "caption",
                f"{where} (image_id {image_id}): caption is {_show(entry['caption'])}, "
                "not a string",
            )
            continue
        if image_id not in seen:
            problems.add(
                "orphan",
                f"{where}: a caption for image_id {image_id}, which is not in 'images'",
            )
            continue
        captions.setdefault(image_id, []).append(entry["caption"])
    problems.raise_first()
    _warn_uncaptioned(
        captions_file,
        [f"id {i}, {printable(name)}" for i, name in images if i not in captions],
    )
    result = [
        ImageMetadata(image_id, image_dir / name, tuple(captions[image_id]))
        for image_id, name in images
        if image_id in captions
    ]
    require_images_present(result, captions_file, image_dir)
    return result


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
    Problems are errors as for COCO caption files (see the module's docstring).
    """
    split_file, image_dir = Path(split_file), Path(image_dir)
    _require_dir(image_dir, "image directory")
    data = _load_json(split_file, "Karpathy split file")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)):
        raise ShowtellError(
            f"{printable(str(split_file))}: not a Karpathy split file (need 'images', a list "
            "of objects with 'split', 'filename', 'sentences' and 'cocoid' or 'imgid')"
        )
    splits: dict[str, list[ImageMetadata]] = {name: [] for name in SPLITS}
    problems = _Problems(split_file)
    seen: dict[int, str] = {}
    uncaptioned: list[str] = []
    for k, image in enumerate(data["images"]):
        where = f"images[{k}]"
        id_key = "cocoid" if isinstance(image, dict) and "cocoid" in image else "imgid"
        if not isinstance(image, dict) or not {"split", "filename", "sentences", id_key} <= set(
            image
        ):
            problems.add(
                "shape",
                f"{where} is not an object with 'split', 'filename', 'sentences' and "
                "'cocoid' or 'imgid'",
            )
            continue
        image_id = _image_id(image[id_key])
        if image_id is None:
            problems.add("id", f"{where}: {id_key} is {_show(image[id_key])}, not an integer")
            continue
        _check_unique(problems, seen, image_id, where)
        reason = _relative_name(image.get("filepath", ""), image["filename"])
        if reason is not None:
            problems.add("name", f"{where} ({id_key} {image_id}): filepath/filename {reason}")
            continue
        sentences = image["sentences"]
        if not isinstance(sentences, list) or not all(
            isinstance(x, dict) and "raw" in x for x in sentences
        ):
            problems.add("shape", f"{where}: 'sentences' is not a list of objects with 'raw'")
            continue
        raws = [x["raw"] for x in sentences]
        bad = [r for r in raws if not isinstance(r, str)]
        if bad:
            problems.add(
                "caption",
                f"{where} ({id_key} {image_id}): a sentence's raw is {_show(bad[0])}, not a string",
            )
            continue
        if not isinstance(image["split"], str):
            problems.add("shape", f"{where}: split is {_show(image['split'])}, not a string")
            continue
        split = {"restval": "train"}.get(image["split"], image["split"])
        if split not in splits:
            continue
        path = image_dir / image.get("filepath", "") / image["filename"]
        if not raws:
            uncaptioned.append(f"{id_key} {image_id}, {printable(str(path))}")
            continue
        splits[split].append(ImageMetadata(image_id, path, tuple(raws)))
    problems.raise_first()
    _warn_uncaptioned(split_file, uncaptioned)
    require_images_present([i for s in splits.values() for i in s], split_file, image_dir)
    return splits
