"""evaluate (perplexity, --metrics) and score, through the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import write_coco
from ptb_corpus import image_case, require_java
from showtell.checkpoint import load_checkpoint
from showtell.cli import main
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import read_caption_records
from showtell.evaluation import metrics
from showtell.model import ShowAndTell


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


# --- score: the official numbers, and one line for what is wrong -------------------------


def _official_scores(references: dict, hypotheses: dict) -> dict[str, float]:
    """pycocoevalcap as COCOEvalCap runs it (Java PTBTokenizer, then the scorers), in the
    references' image order; METEOR aside (tests/test_metrics.py covers it)."""
    tokenizer = PTBTokenizer()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        gts = tokenizer.tokenize(
            {i: [{"caption": c} for c in references[i]] for i in references if i in hypotheses}
        )
        res = tokenizer.tokenize({i: [{"caption": hypotheses[i]}] for i in gts})
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores = {f"Bleu_{n + 1}": bleu[n] for n in range(4)}
    scores["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    return scores


def test_score_gives_the_official_numbers(tmp_path: Path, capsys, monkeypatch) -> None:
    require_java()
    references, hypotheses = image_case(60)
    ids = list(references)[::-1]  # the annotation file's image order is the official one
    annotations = write_coco(tmp_path / "refs.json", [(i, f"{i}.jpg") for i in ids], references)
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in hypotheses.items()]))
    monkeypatch.setattr(metrics, "java_available", lambda: False)  # METEOR: test_metrics
    assert main(["score", f"--results={results}", f"--annotations={annotations}", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    official = _official_scores({i: references[i] for i in ids}, hypotheses)
    for name, value in official.items():
        assert scored[name] == pytest.approx(value, abs=1e-6), name
    assert scored["METEOR"] is None


BAD_RESULTS = [
    ("[]", "no results to score (an empty list)"),
    ('{"image_id": 1, "caption": "a"}', "the top level is not a list"),
    ("[{", "not a COCO results file"),
    ('[{"image_id": 1, "caption": 42}]', "entry 0: caption 42 is not a string"),
    ('[{"image_id": 1, "caption": null}]', "entry 0: caption null is not a string"),
    ('[{"image_id": 1, "caption": ["a", "list"]}]', 'caption ["a", "list"] is not a string'),
    ('[{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]', "entry 1: image 1"),
    ('[{"image_id": 202.5, "caption": "a"}]', "entry 0: image_id 202.5 is not an integer"),
    ('[{"image_id": "1", "caption": "a"}]', 'image_id "1" is not an integer'),
    ('[{"image_id": true, "caption": "a"}]', "image_id true is not an integer"),
    ('[{"image_id": 1}]', 'entry 0 has no "image_id" and "caption"'),
    ('[{"image_id": 1, "caption": "a"}, 7]', 'entry 1 has no "image_id" and "caption"'),
    ('[{"image_id": 99, "caption": "a"}]', "1 result image ids have no reference captions"),
]


@pytest.mark.parametrize(("text", "message"), BAD_RESULTS)
def test_score_rejects_a_bad_results_file(tmp_path: Path, capsys, text: str, message: str) -> None:
    annotations = write_coco(tmp_path / "refs.json", [(1, "1.jpg")], {1: ["a dog", "a cat"]})
    results = tmp_path / "results.json"
    results.write_text(text)
    assert main(["score", f"--results={results}", f"--annotations={annotations}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {results}") and message in err, err


BAD_ANNOTATIONS = [
    ([{"image_id": 1, "caption": None}], "annotation 0: caption null is not a string"),
    ([{"image_id": 1, "caption": 42}], "annotation 0: caption 42 is not a string"),
    ([{"image_id": 1, "caption": ["a", "list"]}], "is not a string"),
    ([{"image_id": 1.5, "caption": "a"}], "annotation 0: image_id 1.5 is not an integer"),
    ([{"caption": "a"}], 'annotation 0 has no "image_id" and "caption"'),
    (None, 'no "annotations" list'),
]


@pytest.mark.parametrize(("annotations", "message"), BAD_ANNOTATIONS)
def test_score_rejects_a_bad_annotations_file(
    tmp_path: Path, capsys, annotations: list | None, message: str
) -> None:
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": annotations}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "caption": "a dog"}]))
    assert main(["score", f"--results={results}", f"--annotations={path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}") and message in err, err


def test_evaluate_names_a_corrupt_shard_in_one_line(
    tiny_checkpoint: Path, synthetic_records: Path, tmp_path: Path, capsys
) -> None:
    """With DataLoader workers, the reader's error comes back wrapped in the worker's
    traceback; the user sees the error's own line."""
    data = bytearray((synthetic_records / "val-00000-of-00001").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    shard = tmp_path / "val-00000-of-00001"
    shard.write_bytes(bytes(data))
    args = [
        "evaluate",
        f"--input_file_pattern={shard}",
        f"--checkpoint_dir={tiny_checkpoint}",
        f"--eval_dir={tmp_path / 'eval'}",
        "--once",
        "--min_global_step=0",
        "--num_workers=2",
    ]
    assert main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    err = [line for line in lines if line.strip() and "perplexity:" not in line]  # not tqdm
    assert len(err) == 1 and err[0].startswith(f"error: {shard}: "), err
    assert "Traceback" not in err[0] and "DataLoader" not in err[0]
