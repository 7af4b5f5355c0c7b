"""The README's recipe for one's own images, run as a user runs it, on a stand-in for
a user's data that no setting was chosen on: images of one or two coloured digits
(DejaVu fonts, random sizes and places, muted backgrounds) with five captions each in
COCO's layout. Prints the time of each command and how often the test captions name
every digit with its colour and nothing else, beside CIDEr-D.

    python benchmarks/own_images.py [--images 3000] [--steps 3000] [--config cpu-lite]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
BACKGROUNDS = [(128, 128, 128), (200, 190, 170), (90, 110, 130), (170, 200, 220), (60, 60, 60)]
SIZE = 160


def draw_digits(out: Path, count: int, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Writes out/images/*.jpg and out/captions.json; returns each file's (colour, digit)s."""
    fonts = sorted(FONT_DIR.glob("DejaVu*.ttf"))
    if not fonts:
        sys.exit(f"error: {FONT_DIR}: no DejaVu fonts (apt install fonts-dejavu-core)")
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, truth = [], [], {}
    for i in range(count):
        back = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in rng.choice(BACKGROUNDS))
        image = Image.new("RGB", (SIZE, SIZE), back)
        draw = ImageDraw.Draw(image)
        halves = rng.choice([[None], [0, 1], [0, 1]])  # one digit anywhere, or one per half
        objects: list[tuple[str, int]] = []
        for half in halves:
            digit = rng.randrange(10)
            colour = rng.choice([c for c in COLOURS if (c, digit) not in objects])
            font = ImageFont.truetype(
                str(rng.choice(fonts)),
                rng.randint(60, 110) if half is None else rng.randint(50, 80),
            )
            left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
            w, h = right - left, bottom - top
            lo, hi = (5, SIZE - w - 5) if half is None else (half * 80 + 2, half * 80 + 78 - w)
            x, y = rng.randint(lo, max(lo, hi)), rng.randint(5, max(5, SIZE - h - 5))
            draw.text((x - left, y - top), str(digit), font=font, fill=COLOURS[colour])
            objects.append((colour, digit))
        name = f"digits_{seed}_{i:06d}.jpg"
        image.save(out / "images" / name, quality=90)
        images.append({"id": i, "file_name": name})
        phrases = [f"a {c} {d}" for c, d in objects]
        both = " and ".join(phrases)
        other = (
            f"the digit {objects[0][1]} in {objects[0][0]}"
            if len(objects) == 1
            else (f"{phrases[0]} next to {phrases[1]}")
        )
        for text in (
            both,
            f"there is {both}",
            f"an image of {both}",
            other,
            f"a picture of {both} .",
        ):
            annotations.append({"id": len(annotations), "image_id": i, "caption": text})
        truth[name] = objects
    (out / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (out / "truth.json").write_text(json.dumps(truth))  # what each image shows
    return truth


def named(caption: str) -> Counter:
    """The (colour, digit) pairs a caption names."""
    colours = "|".join(COLOURS)
    found = re.match(rf"the digit (\d) in ({colours})", caption)
    if found:
        return Counter([(found.group(2), int(found.group(1)))])
    return Counter((c, int(d)) for c, d in re.findall(rf"\b({colours}) (\d)\b", caption))


def run(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--config", default="cpu-lite")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="showtell-own-images-"))
    truth = draw_digits(work / "raw", args.images, args.seed)
    showtell = str(Path(sys.executable).parent / "showtell")
    times = {
        "build": run([showtell, "build-mscoco-data", "--captions_file=raw/captions.json",
                      "--image_dir=raw/images", "--output_dir=data"], work),
        "train": run([showtell, "train", "--config", args.config,
                      "--input_file_pattern=data/train-?????-of-*", "--train_dir=run/train",
                      f"--number_of_steps={args.steps}"], work),
        "evaluate": run([showtell, "evaluate", "--config", args.config, "--once", "--metrics",
                         "--input_file_pattern=data/test-?????-of-*", "--checkpoint_dir=run/train",
                         "--eval_dir=run/eval"], work),
    }  # fmt: skip
    names = {
        im["id"]: im["file_name"]
        for im in json.loads((work / "raw/captions.json").read_text())["images"]
    }
    results = json.loads((work / "run/eval/captions_results.json").read_text())
    hits = Counter()
    for result in results:
        expected, said = Counter(truth[names[result["image_id"]]]), named(result["caption"])
        hits["all"] += said == expected
        hits["digits"] += Counter(d for _, d in said.elements()) == Counter(
            d for _, d in expected.elements()
        )
        hits["colours"] += Counter(c for c, _ in said.elements()) == Counter(
            c for c, _ in expected.elements()
        )
    cider = json.loads((work / "run/eval/metrics.json").read_text())["metrics"]["CIDEr"]
    n = len(results)
    print(
        f"{n} test images: every digit and its colour named {hits['all'] / n:.1%} "
        f"(digits {hits['digits'] / n:.1%}, colours {hits['colours'] / n:.1%}), "
        f"CIDEr-D {cider:.2f}; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
        + f", total {sum(times.values()) / 60:.1f} min; in {work}"
    )


if __name__ == "__main__":
    main()
