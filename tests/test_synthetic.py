from __future__ import annotations

import json
from pathlib import Path

from showtell.cli import main
from showtell.demo.synthetic import (
    COLOURS,
    SceneObject,
    SyntheticConfig,
    attribute_accuracy,
    caption_is_correct,
    load_attributes,
    make_synthetic,
)


def _read(root: Path) -> tuple[dict, dict, dict[str, bytes]]:
    train = json.loads((root / "annotations" / "captions_train.json").read_text())
    val = json.loads((root / "annotations" / "captions_val.json").read_text())
    images = {p.name: p.read_bytes() for p in sorted(root.rglob("*.jpg"))}
    return train, val, images


def test_deterministic_by_seed_whatever_the_workers(tmp_path: Path) -> None:
    config = SyntheticConfig(num_images=120, seed=7, val_fraction=0.25)
    make_synthetic(tmp_path / "a", config, workers=1)
    make_synthetic(tmp_path / "b", config, workers=2)
    make_synthetic(tmp_path / "c", SyntheticConfig(num_images=120, seed=8), workers=1)
    a, b, c = _read(tmp_path / "a"), _read(tmp_path / "b"), _read(tmp_path / "c")
    assert a == b
    assert a[0]["annotations"] != c[0]["annotations"] and a[2] != c[2]
    train, val, images = a
    assert len(train["images"]) == 90 and len(val["images"]) == 30 and len(images) == 120
    assert len(train["annotations"]) == 5 * 90


def test_captions_name_every_object_and_vary(tmp_path: Path) -> None:
    assert main(["make-synthetic", str(tmp_path), "--images=200", "--seed=3"]) == 0
    truth = load_attributes(tmp_path / "annotations" / "attributes.json")
    train, val, _ = _read(tmp_path)
    captions: dict[int, list[str]] = {}
    for a in train["annotations"] + val["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"])
    assert len(captions) == 200 and set(captions) == set(truth)
    for image_id, texts in captions.items():
        objects = truth[image_id]
        assert 1 <= len(objects) <= 3
        assert len(texts) == 5
        for text in texts:
            assert caption_is_correct(text, objects), (text, objects)
    # Paraphrases differ: most images get at least 4 distinct captions.
    assert sum(len(set(t)) >= 4 for t in captions.values()) > 150
    counts = {n: sum(len(o) == n for o in truth.values()) for n in (1, 2, 3)}
    assert min(counts.values()) > 40


def test_caption_scoring_catches_wrong_attributes() -> None:
    objects = [
        SceneObject("red", "circle", "large", 0, 0),
        SceneObject("blue", "star", "small", 2, 2),
    ]
    assert caption_is_correct("A big red disc and a tiny blue star .", objects)
    assert caption_is_correct("a blue star to the right , a red circle on the left", objects)
    assert not caption_is_correct("a big red circle", objects)  # one object missing
    assert not caption_is_correct("a red square and a blue star", objects)  # wrong shape
    assert not caption_is_correct("a green circle and a blue star", objects)  # wrong colour
    assert not caption_is_correct(
        "a red circle , a blue star and a white star", objects
    )  # an extra object
    assert len(COLOURS) == 8


def test_attribute_accuracy_report() -> None:
    truth = {
        1: [SceneObject("red", "circle", "large", 0, 0)],
        2: [
            SceneObject("red", "circle", "large", 0, 0),
            SceneObject("blue", "star", "small", 1, 1),
        ],
    }
    report = attribute_accuracy({1: "a big red disc", 2: "a red square and a blue star"}, truth)
    assert report == {"attributes": 0.5, "colours": 1.0, "shapes": 0.5, "objects": 1.0}
