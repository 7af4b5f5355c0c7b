"""`showtell demo` (what `make demo` runs): the whole seed pipeline, offline, for real.

1. draw a synthetic data set (COCO 2014 layout, fixed seed);
2. build im2txt's records from it with the MSCOCO command;
3. pretrain the encoder on the training images' object labels: no ImageNet weights
   exist here, and this stands in for them (`showtell pretrain-encoder`; the weights
   reach phase 1 through `--inception_checkpoint_file`, as ImageNet weights would,
   with the label head whose class probabilities the preset adds to the features);
4. phase 1: train with the encoder frozen, on cached features;
5. phase 2: fine-tune everything from the phase-1 checkpoint, same train_dir;
6. evaluate on the held-out test scenes: perplexity, BLEU-1..4, METEOR (with Java),
   ROUGE-L, CIDEr-D, and attribute accuracy (the share of images whose caption names
   the colour and shape of every object and no other), beside the best single fixed
   caption (the most common training caption) scored the same way;
7. caption a few test images in the seed's output format; write the HTML gallery.

Model, training and demo sizes come from a preset (`cpu-small` by default, see
`presets/`). Everything goes under one folder, and a second run reuses what is done;
the train_dir records what its checkpoints were trained with, and one trained with
other settings (an edited preset, new encoder weights) is moved aside, not resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
    PretrainConfig,
    TrainConfig,
    load_preset,
    preset_section,
)
from showtell.data.build import DATASET_JSON, BuildConfig, build_mscoco, format_summary
from showtell.data.records import expand_file_patterns
from showtell.data.synthetic import (
    OBJECT_LABELS_FILE,
    SyntheticConfig,
    attribute_accuracy,
    image_filename,
    load_attributes,
    make_synthetic,
)
from showtell.device import select_device
from showtell.evaluation.evaluate import evaluate_metrics, evaluate_perplexity, load_references
from showtell.evaluation.metrics import METRIC_NAMES, ptb_tokenize, score_captions
from showtell.inference import Captioner, caption_files, format_captions
from showtell.model import resolve_model_config
from showtell.training.pretrain import pretrain_encoder
from showtell.training.train import train

DEMO_SEED = 1234


def _step(train_dir: Path) -> int:
    path = latest_checkpoint(train_dir) if train_dir.exists() else None
    return load_checkpoint(path).step if path else 0


# What the checkpoints in the demo's train_dir were trained with (see `_reuse_train_dir`).
SETTINGS_FILE = "demo_settings.json"


def _reuse_train_dir(train_dir: Path, settings: dict[str, Any]) -> bool:
    """Keeps `train_dir` when its checkpoints were trained with `settings` (and returns
    True); otherwise moves it aside to `<train_dir>.previous` (replacing an older one),
    so that an edited preset or new encoder weights start phase 1 again instead of
    resuming, or reporting, a model trained differently. Writes `settings` into the
    train_dir it leaves in place."""
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


def run_demo(output_dir: Path, preset_name: str = "cpu-small") -> dict[str, Any]:
    start = time.perf_counter()
    preset = load_preset(preset_name)
    demo: DemoConfig = preset_section(preset, DemoConfig, "demo", preset_name)
    beam: InferenceConfig = preset_section(preset, InferenceConfig, "inference", preset_name)
    synthetic_dir, records_dir = output_dir / "synthetic", output_dir / "records"
    train_dir, eval_dir = output_dir / "train", output_dir / "eval"
    annotations = synthetic_dir / "annotations"

    # 1. Data set.
    synthetic = SyntheticConfig(
        num_images=demo.images,
        seed=DEMO_SEED,
        image_size=demo.image_size,
        max_objects=demo.max_objects,
        val_fraction=0.33,
    )
    attributes_file = annotations / "attributes.json"
    made = attributes_file.is_file() and json.loads(attributes_file.read_text())[
        "config"
    ] == dataclasses.asdict(synthetic)
    if made:
        _banner(f"[1/7] synthetic data set: reusing {synthetic_dir}")
    else:
        _banner(f"[1/7] synthetic data set: drawing {demo.images:,} scenes into {synthetic_dir}")
        made_info = make_synthetic(synthetic_dir, synthetic)
        print(f"{made_info['images']:,} images in {made_info['seconds']:.1f} s")

    # 2. Records, with the command a COCO user runs.
    if made and (records_dir / DATASET_JSON).is_file():
        _banner(f"[2/7] records: reusing {records_dir}")
        print(format_summary(json.loads((records_dir / DATASET_JSON).read_text())))
    else:
        _banner(f"[2/7] records: building im2txt shards into {records_dir}")
        build_mscoco(
            annotations / "captions_train.json",
            synthetic_dir / "train",
            annotations / "captions_val.json",
            synthetic_dir / "val",
            BuildConfig(output_dir=records_dir, train_shards=8, val_shards=2, test_shards=2),
        )

    # 3. The encoder's starting weights: ImageNet's stand-in.
    train_pattern = str(records_dir / "train-?????-of-00008")
    model = preset.get("model", {})
    encoder_file = output_dir / "encoder-pretrained" / "encoder.safetensors"
    if demo.pretrain_encoder:
        pretrain = preset_section(preset, PretrainConfig, "pretrain", preset_name)
        summary_file = encoder_file.with_name(encoder_file.name + ".json")
        encoder = resolve_model_config(model, vocab_size=1)  # the encoder and its input
        wanted = {  # as the summary file has them (JSON: tuples read back as lists)
            "config": dataclasses.asdict(pretrain),
            "encoder": encoder.encoder,
            "image": json.loads(json.dumps(dataclasses.asdict(encoder.image))),
        }
        done = made and summary_file.is_file() and encoder_file.is_file()
        summary = json.loads(summary_file.read_text()) if done else {}
        if done and {k: summary.get(k) for k in wanted} == wanted:
            _banner(f"[3/7] encoder pretraining: reusing {encoder_file}")
        else:
            _banner("[3/7] encoder pretraining on the training images' object labels")
            pretrain_encoder(
                model, train_pattern, annotations / OBJECT_LABELS_FILE, encoder_file, pretrain
            )
    else:
        _banner("[3/7] encoder pretraining: off in this preset (random encoder)")

    # 4-5. Phase 1, then phase 2 in the same train_dir.
    base = dataclasses.replace(
        preset_section(preset, TrainConfig, "train", preset_name),
        input_file_pattern=train_pattern,
        train_dir=str(train_dir),
        feature_cache_dir=str(output_dir / "feature-cache"),
        inception_checkpoint_file=str(encoder_file) if demo.pretrain_encoder else "",
    )
    phase_ends = (demo.phase1_steps, demo.phase1_steps + demo.phase2_steps)
    paths = {
        "input_file_pattern",
        "train_dir",
        "vocab_file",
        "feature_cache_dir",
        "inception_checkpoint_file",
    }
    settings = {  # what the model learns from: the data, the settings, the encoder's start
        "data": dataclasses.asdict(synthetic),
        "model": model,
        "train": {k: v for k, v in dataclasses.asdict(base).items() if k not in paths},
        "phase_ends": list(phase_ends),
        "encoder_sha256": (
            hashlib.sha256(encoder_file.read_bytes()).hexdigest() if demo.pretrain_encoder else ""
        ),
    }
    _reuse_train_dir(train_dir, settings)
    for phase, (number, end) in enumerate(zip((4, 5), phase_ends, strict=True), start=1):
        step = _step(train_dir)
        if step >= end:
            _banner(f"[{number}/7] phase {phase}: done already (step {step} >= {end}), reusing")
            continue
        _banner(f"[{number}/7] phase {phase}: training to step {end}")
        config = dataclasses.replace(base, number_of_steps=end, train_inception=phase == 2)
        train(config, model)
    train_seconds = time.perf_counter() - start

    # 6. Evaluation on the held-out test scenes.
    _banner("[6/7] evaluation on the test split")
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
    truth = load_attributes(attributes_file)
    accuracy = attribute_accuracy(results, truth)

    # The best single fixed caption: the most common training caption, for every image.
    train_captions = load_references(annotations / "captions_train.json")
    counts = Counter(ptb_tokenize(c) for cs in train_captions.values() for c in cs)
    fixed_caption = counts.most_common(1)[0][0]
    references = load_references(annotations / "captions_val.json")
    fixed = score_captions(
        {i: references[i] for i in results}, dict.fromkeys(results, fixed_caption)
    )
    fixed_accuracy = attribute_accuracy(dict.fromkeys(results, fixed_caption), truth)

    # 7. A few captions in the seed's format.
    _banner("[7/7] captions for a few test images")
    files = [str(synthetic_dir / "val" / image_filename("val", i)) for i in sorted(results)[:4]]
    for result in caption_files(captioner, files, num_workers=0):
        print(format_captions(result))

    total = time.perf_counter() - start
    rows = [("Perplexity", perplexity.perplexity, None)]
    rows += [(name, scores.corpus[name], fixed.corpus[name]) for name in METRIC_NAMES]
    rows.append(("Attribute accuracy", accuracy["attributes"], fixed_accuracy["attributes"]))
    rows += [
        (f"  {name} right", accuracy[name], fixed_accuracy[name])
        for name in ("colours", "shapes", "objects")
    ]
    _banner(f"Results on {len(results):,} held-out test scenes (step {checkpoint.step})")
    print(f"{'metric':<20} {'model':>10} {'fixed caption':>14}")
    for name, value, baseline in rows:
        shown = "n/a" if value is None else f"{value:.4f}"
        base_shown = "" if baseline is None else f"{baseline:.4f}"
        print(f"{name:<20} {shown:>10} {base_shown:>14}")
    cider_ratio = scores.corpus["CIDEr"] / max(fixed.corpus["CIDEr"], 1e-9)
    print(f'fixed caption: "{fixed_caption}"; CIDEr-D {cider_ratio:.1f}x the fixed caption\'s')
    if scores.meteor_note:
        print(scores.meteor_note)
    print(f"gallery: {eval_dir / 'gallery.html'}")
    print(f"demo finished in {total:.0f} s ({train_seconds:.0f} s to data + training)")
    summary = {
        "perplexity": perplexity.perplexity,
        "metrics": scores.corpus,
        "fixed_caption": fixed_caption,
        "fixed_caption_metrics": fixed.corpus,
        "attribute_accuracy": accuracy,
        "fixed_caption_attribute_accuracy": fixed_accuracy,
        "cider_ratio": cider_ratio,
        "seconds": total,
        "gallery": str(eval_dir / "gallery.html"),
    }
    (output_dir / "demo_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
