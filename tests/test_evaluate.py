"""evaluate (perplexity, --metrics) and score, through the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from showtell.cli import main
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import read_caption_records
from showtell.model import ShowAndTell
from showtell.training.checkpoint import load_checkpoint


def _independent_perplexity(checkpoint_dir: Path, shard: Path, limit: int) -> float:
    """exp(mean masked loss), one record at a time, from the model's log-probabilities."""
    checkpoint = load_checkpoint(checkpoint_dir)
    model = ShowAndTell(checkpoint.model_config)
    model.load_state_dict(checkpoint.model_state())
    model.eval()
    preprocess = ImagePreprocessor(checkpoint.model_config.image, training=False)
    total, words = 0.0, 0
    for record in list(read_caption_records(shard))[:limit]:
        ids = torch.tensor(record.caption_ids)
        with torch.no_grad():
            features = model.image_features(preprocess(record.image_data).unsqueeze(0))
            log_probs = model.log_probs(features, ids[:-1].unsqueeze(0))[0]  # (T, V)
        total -= float(log_probs.gather(1, ids[1:].unsqueeze(1)).sum())
        words += len(ids) - 1
    return math.exp(total / words)


def test_evaluate_once_writes_perplexity(
    tiny_checkpoint: Path, synthetic_records: Path, tmp_path: Path, capsys
) -> None:
    eval_dir = tmp_path / "eval"
    shard = synthetic_records / "val-00000-of-00001"
    code = main(
        [
            "evaluate",
            f"--input_file_pattern={shard}",
            f"--checkpoint_dir={tiny_checkpoint}",
            f"--eval_dir={eval_dir}",
            "--once",
            "--min_global_step=0",
            "--num_eval_examples=7",
            "--batch_size=3",
            "--num_workers=0",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    reported = float(
        re.search(r"Perplexity at step 200: ([\d.]+) \(\d+ words in 7 examples\)", out)[1]
    )
    expected = _independent_perplexity(tiny_checkpoint, shard, limit=7)
    assert reported == pytest.approx(expected, abs=1e-4)

    events = EventAccumulator(str(eval_dir))
    events.Reload()
    [scalar] = events.Scalars("Perplexity")
    assert scalar.step == 200 and scalar.value == pytest.approx(expected, rel=1e-5)

    assert (
        main(
            [
                "evaluate",
                f"--input_file_pattern={shard}",
                f"--checkpoint_dir={tiny_checkpoint}",
                f"--eval_dir={eval_dir}",
                "--once",
                "--num_workers=0",
            ]
        )
        == 0
    )
    assert "Skipping evaluation. Global step = 200 < 5000" in capsys.readouterr().out


def test_evaluate_metrics_and_score(
    tiny_checkpoint: Path, synthetic_records: Path, tmp_path: Path, capsys
) -> None:
    eval_dir = tmp_path / "eval"
    annotations = synthetic_records.parent / "synthetic" / "annotations" / "captions_val.json"
    code = main(
        [
            "evaluate",
            "--metrics",
            f"--input_file_pattern={synthetic_records / 'test-*'}",
            f"--checkpoint_dir={tiny_checkpoint}",
            f"--eval_dir={eval_dir}",
            f"--annotations={annotations}",
            "--max_caption_length=30",
            "--gallery_size=5",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"Bleu_1 +Bleu_2 +Bleu_3 +Bleu_4 +METEOR +ROUGE_L +CIDEr", out)

    results = json.loads((eval_dir / "captions_results.json").read_text())
    test_ids = {r.image_id for r in read_caption_records(synthetic_records / "test-00000-of-00001")}
    assert {r["image_id"] for r in results} == test_ids  # one caption per image
    metrics = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}

    gallery = (eval_dir / "gallery.html").read_text()
    shown = [float(x) for x in re.findall(r"CIDEr-D ([\d.]+)</small>", gallery)]
    assert len(shown) == 5 and shown == sorted(shown)  # worst first
    assert len(list((eval_dir / "gallery").iterdir())) == 5

    # score: the same results file, from the outside.
    assert (
        main(
            [
                "score",
                f"--results={eval_dir / 'captions_results.json'}",
                f"--annotations={annotations}",
                "--json",
            ]
        )
        == 0
    )
    scored = json.loads(capsys.readouterr().out)
    for name, value in metrics.items():
        assert scored[name] == pytest.approx(value, abs=1e-9), name

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 987654, "caption": "a cat"}]))
    assert main(["score", f"--results={bad}", f"--annotations={annotations}"]) == 2
    assert "have no reference captions" in capsys.readouterr().err
