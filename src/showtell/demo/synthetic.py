"""An offline data set of simple scenes, in MSCOCO 2014's layout, so everything runs
with no download.

Each image shows one to three shapes, each with a colour, a shape, a size and a cell
of a 3x3 grid; its five captions describe them the way people vary: synonyms, word
order, optional sizes and positions, capitals and full stops. The layout is
COCO 2014's (a train and a val image folder, one COCO caption file per split), so
the records are built with the very command a COCO user runs, im2txt's split
included. The ground truth of every image is saved in `annotations/attributes.json`,
and `caption_is_correct` scores whether a caption names the colour and shape of
every object (and no other).

Deterministic by seed: image i depends only on (seed, i), whatever the number of
worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm import tqdm

from showtell.data.tokenize import tokenize_caption
from showtell.errors import ShowtellError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 220),
    "yellow": (240, 215, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
    "white": (248, 248, 248),
    "black": (20, 20, 20),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "circle"),
    "square": ("square", "box", "square"),
    "triangle": ("triangle",),
    "star": ("star",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
NUMBER_WORDS = {2: "two", 3: "three"}
# Relative radius of each size, as a fraction of the image side.
RADIUS = {"small": 0.10, "large": 0.155}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    row: int  # 0 top .. 2 bottom
    column: int  # 0 left .. 2 right


@dataclass(frozen=True)
class SyntheticConfig:
    """Options of `showtell make-synthetic`."""

    num_images: int = 5000  # images in all (train + val)
    seed: int = 0  # the data set is a function of (seed, image index)
    image_size: int = 64  # side of the square images, in pixels
    val_fraction: float = 0.33  # share of images in the val split (COCO 2014: 0.33)
    max_objects: int = 3  # objects per image: 1 .. max_objects
    jpeg_quality: int = 90


# --- scenes and their captions -------------------------------------------------------


def sample_scene(rng: random.Random, max_objects: int) -> list[SceneObject]:
    """One to `max_objects` objects in distinct cells with distinct (colour, shape)."""
    count = rng.randint(1, max_objects)
    cells = rng.sample(range(9), count)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPE_WORDS], count)
    return [
        SceneObject(colour, shape, rng.choice(tuple(SIZE_WORDS)), cell // 3, cell % 3)
        for (colour, shape), cell in zip(kinds, cells, strict=True)
    ]


def _position_phrase(obj: SceneObject, rng: random.Random) -> str:
    row, column = ROWS[obj.row], COLUMNS[obj.column]
    if obj.row == 1 and obj.column == 1:
        return rng.choice(("in the center", "in the middle", "in the center of the image"))
    if obj.row == 1:
        return rng.choice((f"on the {column}", f"on the {column} side", f"to the {column}"))
    if obj.column == 1:
        return rng.choice((f"at the {row}", f"near the {row}", f"at the {row} of the image"))
    return rng.choice((f"in the {row} {column}", f"in the {row} {column} corner"))


def _object_phrase(obj: SceneObject, rng: random.Random, with_size: bool) -> str:
    words = [rng.choice(SIZE_WORDS[obj.size])] if with_size else []
    words += [obj.colour, rng.choice(SHAPE_WORDS[obj.shape])]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def make_caption(objects: Sequence[SceneObject], rng: random.Random) -> str:
    """One paraphrase describing every object's colour and shape."""
    objects = list(objects)
    if rng.random() < 0.5:  # people list shapes in reading order, or any order
        objects.sort(key=lambda o: (o.row, o.column))
    else:
        rng.shuffle(objects)
    with_size = rng.random() < 0.8
    with_position = rng.random() < 0.7
    phrases = [_object_phrase(o, rng, with_size) for o in objects]
    if with_position:
        phrases = [f"{p} {_position_phrase(o, rng)}" for p, o in zip(phrases, objects, strict=True)]
    listed = _join(phrases)
    if len(objects) == 1:
        template = rng.choice(("{}", "there is {}", "a picture of {}", "an image showing {}"))
    else:
        n = NUMBER_WORDS[len(objects)]
        template = rng.choice(
            ("{}", "there are {}", f"{n} shapes : {{}}", f"{n} shapes, {{}}", "an image of {}")
        )
    caption = template.format(listed)
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:]
    return caption + rng.choice(("", ".", " ."))


_SHAPE_OF_WORD = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
_SIZE_OF_WORD = {word: size for size, words in SIZE_WORDS.items() for word in words}


def caption_mentions(caption: str | Sequence[str]) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a caption names: a colour word followed by a shape word
    (a size word may stand between)."""
    tokens = tokenize_caption(caption) if isinstance(caption, str) else list(caption)
    mentions = []
    for i, token in enumerate(tokens):
        if token in COLOURS:
            j = i + 1
            while j < len(tokens) and tokens[j] in _SIZE_OF_WORD:
                j += 1
            if j < len(tokens) and tokens[j] in _SHAPE_OF_WORD:
                mentions.append((token, _SHAPE_OF_WORD[tokens[j]]))
    return mentions


def _names_exactly(mentions: list[tuple[str, str]], objects: Sequence[SceneObject]) -> bool:
    return sorted(mentions) == sorted((o.colour, o.shape) for o in objects)


def caption_is_correct(caption: str | Sequence[str], objects: Sequence[SceneObject]) -> bool:
    """True when the caption names the colour and shape of every object, and no other."""
    return _names_exactly(caption_mentions(caption), objects)


def attribute_accuracy(
    captions: dict[int, str], truth: dict[int, list[SceneObject]]
) -> dict[str, float]:
    """Shares of images whose caption gets, for every object and no other: colour and
    shape ("attributes"), colours alone, shapes alone, and the number of objects."""
    hits = {"attributes": 0, "colours": 0, "shapes": 0, "objects": 0}
    for image_id, caption in captions.items():
        mentions, objects = caption_mentions(caption), truth[image_id]
        hits["attributes"] += _names_exactly(mentions, objects)
        hits["colours"] += sorted(c for c, _ in mentions) == sorted(o.colour for o in objects)
        hits["shapes"] += sorted(s for _, s in mentions) == sorted(o.shape for o in objects)
        hits["objects"] += len(mentions) == len(objects)
    return {name: count / max(1, len(captions)) for name, count in hits.items()}


# --- drawing --------------------------------------------------------------------------


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_scene(objects: Sequence[SceneObject], size: int, rng: random.Random) -> Image.Image:
    """Renders objects on a muted random background."""
    level = rng.randint(95, 165)
    background = tuple(max(0, min(255, level + rng.randint(-15, 15))) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for obj in objects:
        r = RADIUS[obj.size] * size
        slack = max(0.0, cell / 2 - r - 1)
        cx = (obj.column + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (obj.row + 0.5) * cell + rng.uniform(-slack, slack)
        colour = COLOURS[obj.colour]
        box = (cx - r, cy - r, cx + r, cy + r)
        if obj.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif obj.shape == "square":
            s = r * 0.85
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], colour)
        else:
            draw.polygon(_star(cx, cy, r * 1.1), fill=colour)
    return image


# --- writing the data set -------------------------------------------------------------


def _split_of(index: int, config: SyntheticConfig) -> str:
    num_val = round(config.val_fraction * config.num_images)
    return "train" if index < config.num_images - num_val else "val"


def image_filename(split: str, image_id: int) -> str:
    return f"synthetic_{split}_{image_id:012d}.jpg"


def _make_images(args: tuple[Path, SyntheticConfig, int, int]) -> list[dict[str, Any]]:
    """Writes images [start, end); returns one entry per image for the caption files."""
    output_dir, config, start, end = args
    entries = []
    for index in range(start, end):
        rng = random.Random(f"{config.seed}:{index}")
        objects = sample_scene(rng, config.max_objects)
        split = _split_of(index, config)
        image_id = index + 1
        name = image_filename(split, image_id)
        draw_scene(objects, config.image_size, rng).save(
            output_dir / split / name, quality=config.jpeg_quality
        )
        entries.append(
            {
                "split": split,
                "id": image_id,
                "file_name": name,
                "captions": [make_caption(objects, rng) for _ in range(5)],
                "objects": [asdict(o) for o in objects],
            }
        )
    return entries


def make_synthetic(
    output_dir: str | Path, config: SyntheticConfig, workers: int | None = None
) -> dict[str, Any]:
    """Writes the data set under `output_dir`; returns a summary."""
    if not 1 <= config.num_images <= 10_000_000:
        raise ShowtellError(f"--images must be between 1 and 10,000,000, got {config.num_images}")
    if not 0 <= config.val_fraction < 1:
        raise ShowtellError(f"--val_fraction must be in [0, 1), got {config.val_fraction}")
    if config.image_size < 16:
        raise ShowtellError(f"--image_size must be at least 16, got {config.image_size}")
    output_dir = Path(output_dir)
    for sub in ("train", "val", "annotations"):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    chunk = 500
    tasks = [
        (output_dir, config, s, min(s + chunk, config.num_images))
        for s in range(0, config.num_images, chunk)
    ]
    workers = workers or min(os.cpu_count() or 1, len(tasks))
    entries: list[dict[str, Any]] = []
    with tqdm(total=config.num_images, desc="drawing scenes", unit="img", file=sys.stderr) as bar:
        if workers > 1:
            with mp.get_context("spawn").Pool(workers) as pool:
                for part in pool.imap(_make_images, tasks):
                    entries.extend(part)
                    bar.update(len(part))
        else:
            for task in tasks:
                part = _make_images(task)
                entries.extend(part)
                bar.update(len(part))

    counts = {}
    for split in ("train", "val"):
        chosen = [e for e in entries if e["split"] == split]
        counts[split] = len(chosen)
        coco = {
            "info": {"description": f"showtell synthetic shapes, seed {config.seed}"},
            "licenses": [],
            "type": "captions",
            "images": [
                {
                    "id": e["id"],
                    "file_name": e["file_name"],
                    "width": config.image_size,
                    "height": config.image_size,
                }
                for e in chosen
            ],
            "annotations": [
                {"id": e["id"] * 10 + k, "image_id": e["id"], "caption": caption}
                for e in chosen
                for k, caption in enumerate(e["captions"])
            ],
        }
        path = output_dir / "annotations" / f"captions_{split}.json"
        path.write_text(json.dumps(coco))
    attributes = {
        "config": asdict(config),
        "colours": list(COLOURS),
        "shapes": SHAPE_WORDS,
        "sizes": SIZE_WORDS,
        "images": {str(e["id"]): e["objects"] for e in entries},
    }
    (output_dir / "annotations" / "attributes.json").write_text(json.dumps(attributes))
    seconds = time.perf_counter() - start
    summary = {
        "output_dir": str(output_dir),
        "images": config.num_images,
        "train_images": counts["train"],
        "val_images": counts["val"],
        "captions": 5 * config.num_images,
        "seconds": round(seconds, 3),
        "images_per_second": round(config.num_images / seconds, 1),
    }
    return summary


def load_attributes(path: str | Path) -> dict[int, list[SceneObject]]:
    """Ground truth saved by make_synthetic: image id -> its objects."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return {int(k): [SceneObject(**o) for o in v] for k, v in data["images"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ShowtellError(f"{path}: not a synthetic attributes file: {e}") from e
