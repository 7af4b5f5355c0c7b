"""`showtell evaluate`: the seed's perplexity loop, and caption metrics on a split.

Perplexity (im2txt's evaluate.py): in its own process, every `eval_interval_secs` the
newest complete checkpoint is evaluated unless it was already, or its global step is
below `min_global_step`; perplexity per word, exp(sum(loss * mask) / sum(mask)) over
the first `num_eval_examples` records, goes to TensorBoard as "Perplexity" in
eval_dir. Checkpoints are only ever read once complete, so it is safe beside training.

Metrics (`--metrics`): every image of the split (deduplicated from its per-caption
records) is captioned by beam search; BLEU-1..4, METEOR, ROUGE-L and CIDEr-D are
computed against all of its reference captions (the raw ones from `--annotations`
when given, else the records' tokens joined). Writes a COCO results file, a metrics
JSON, TensorBoard scalars and an HTML gallery, worst CIDEr-D first.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from showtell.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint
from showtell.config.commands import EvaluateSettings
from showtell.config.merge import default_of
from showtell.data.dataset import CaptionDataset, make_loader
from showtell.data.images import BadImageError
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import expand_file_patterns, read_caption_records
from showtell.device import select_device
from showtell.errors import ShowtellError
from showtell.evaluation.metrics import METRIC_NAMES, Scores, format_scores, score_captions
from showtell.inference import Captioner
from showtell.tf_import.reader import find_tf_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class Perplexity:
    step: int
    perplexity: float
    words: int
    examples: int


def evaluate_perplexity(
    checkpoint: Checkpoint,
    files: list[Path],
    num_eval_examples: int,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 2,
) -> Perplexity:
    """Per-word perplexity of the checkpoint's model on the first examples of the files."""
    model = checkpoint.build_model(device)
    dataset = CaptionDataset([str(f) for f in files], checkpoint.model_config.image, training=False)
    loader = make_loader(dataset, batch_size, num_workers)
    total_loss, words, examples = 0.0, 0, 0
    with (
        torch.inference_mode(),
        tqdm(total=num_eval_examples, desc="perplexity", unit="ex", file=sys.stderr) as bar,
        _one_line_worker_errors(),
    ):
        for batch in loader:
            take = min(len(batch), num_eval_examples - examples)
            mask = batch.mask[:take]
            batch = batch.to(device)
            loss = model(
                batch.input_seqs[:take],
                batch.target_seqs[:take],
                mask.to(device),
                images=batch.images[:take],
                reduction="sum",
            )
            total_loss += float(loss)
            words += int(mask.sum())
            examples += take
            bar.update(take)
            if examples >= num_eval_examples:
                break
    if words == 0:
        raise ShowtellError("no evaluation examples were read")
    return Perplexity(checkpoint.step, math.exp(total_loss / words), words, examples)


@contextlib.contextmanager
def _one_line_worker_errors() -> Iterator[None]:
    """A DataLoader worker's exception comes back re-raised with the worker's whole
    traceback as its message ("Caught RecordError in DataLoader worker process 0.
    Original Traceback ..."): keep the error's own line, which names the shard."""
    try:
        yield
    except ShowtellError as e:
        text = str(e).rstrip()
        if "DataLoader worker" not in text or "Traceback" not in text:
            raise
        prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
        raise ShowtellError(text.splitlines()[-1].removeprefix(prefix)) from None


def run_perplexity_loop(settings: EvaluateSettings) -> list[Perplexity]:
    """The seed's evaluation loop; with `once`, the newest checkpoint and return.
    `checkpoint_dir` may be im2txt's own train dir (TensorFlow checkpoints, perhaps
    still being written by im2txt's training): then `vocab_file` is required."""
    from torch.utils.tensorboard import SummaryWriter

    input_file_pattern, checkpoint_dir = settings.input_file_pattern, settings.checkpoint_dir
    eval_dir, vocab_file, once = settings.eval_dir, settings.vocab_file, settings.once
    eval_interval_secs, min_global_step = settings.eval_interval_secs, settings.min_global_step
    num_eval_examples, device = settings.num_eval_examples, settings.device
    batch_size, num_workers = settings.batch_size, settings.num_workers

    files = expand_file_patterns(input_file_pattern)
    target = select_device(device)
    writer = SummaryWriter(str(eval_dir))
    results: list[Perplexity] = []
    last_evaluated: Path | None = None
    try:
        while True:
            start = time.time()
            path = latest_checkpoint(checkpoint_dir) if checkpoint_dir.exists() else None
            if path is None and (tf_checkpoint := find_tf_checkpoint(checkpoint_dir)):
                path = tf_checkpoint.prefix  # im2txt's newest
            if path is None:
                if once:
                    raise ShowtellError(f"{checkpoint_dir}: no complete checkpoint found")
                logger.info("No checkpoint found in %s; waiting", checkpoint_dir)
            elif path != last_evaluated:
                checkpoint = load_checkpoint(path, vocab_file=vocab_file)
                if checkpoint.step < min_global_step:
                    logger.info(
                        "Skipping evaluation. Global step = %d < %d",
                        checkpoint.step,
                        min_global_step,
                    )
                else:
                    result = evaluate_perplexity(
                        checkpoint, files, num_eval_examples, target, batch_size, num_workers
                    )
                    writer.add_scalar("Perplexity", result.perplexity, result.step)
                    writer.flush()
                    results.append(result)
                    logger.info(
                        "Perplexity at step %d: %.4f (%s words in %s examples)",
                        result.step,
                        result.perplexity,
                        f"{result.words:,}",
                        f"{result.examples:,}",
                    )
                last_evaluated = path
            if once:
                return results
            time.sleep(max(0.0, eval_interval_secs - (time.time() - start)))
    finally:
        writer.close()


# --- caption metrics ------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShowtellError(f"{path}: not {what} ({e})") from e


def _image_id(value: Any, path: Path, where: str) -> int:
    if type(value) is not int:  # not 202.5, "202" or true, which COCO's tools do not match
        raise ShowtellError(f"{path}: {where}: image_id {_short(value)} is not an integer")
    return value


def _caption(value: Any, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise ShowtellError(f"{path}: {where}: caption {_short(value)} is not a string")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def load_references(annotations: Path) -> dict[int, list[str]]:
    """Raw reference captions by image id from a COCO-format caption file, images in the
    order of its "images" list (COCO's getImgIds(), the official evaluation's order)."""
    data = _read_json(annotations, "a COCO caption file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ShowtellError(f'{annotations}: not a COCO caption file (no "annotations" list)')
    references: dict[int, list[str]] = {}
    for n, a in enumerate(data["annotations"]):
        where = f"annotation {n}"
        if not isinstance(a, dict) or "image_id" not in a or "caption" not in a:
            raise ShowtellError(f'{annotations}: {where} has no "image_id" and "caption"')
        image_id = _image_id(a["image_id"], annotations, where)
        references.setdefault(image_id, []).append(_caption(a["caption"], annotations, where))
    images = data.get("images")
    order = [i["id"] for i in images if isinstance(i, dict)] if isinstance(images, list) else []
    ordered = {i: references[i] for i in order if type(i) is int and i in references}
    return ordered | references


def load_results(results_file: Path) -> dict[int, str]:
    """A COCO results file: [{"image_id": ..., "caption": ...}], one caption per image."""
    what = "a COCO results file ([{'image_id', 'caption'}])"
    data = _read_json(results_file, what)
    if not isinstance(data, list):
        raise ShowtellError(f"{results_file}: not {what}: the top level is not a list")
    if not data:
        raise ShowtellError(f"{results_file}: no results to score (an empty list)")
    results: dict[int, str] = {}
    for n, r in enumerate(data):
        where = f"entry {n}"
        if not isinstance(r, dict) or "image_id" not in r or "caption" not in r:
            raise ShowtellError(f'{results_file}: {where} has no "image_id" and "caption"')
        image_id = _image_id(r["image_id"], results_file, where)
        if image_id in results:
            raise ShowtellError(
                f"{results_file}: {where}: image {image_id} has a second caption "
                "(the official evaluation takes one per image)"
            )
        results[image_id] = _caption(r["caption"], results_file, where)
    return results


def score_results(results: dict[int, str], references: dict[int, list[str]], source: str) -> Scores:
    """The official metrics of one caption per image against its references, images in
    the references' order (the official evaluation's)."""
    missing = [i for i in results if i not in references]
    if missing:
        raise ShowtellError(
            f"{source}: {len(missing)} result image ids have no reference captions "
            f"(e.g. {missing[:3]})"
        )
    ids = [i for i in references if i in results]
    try:
        return score_captions({i: references[i] for i in ids}, {i: results[i] for i in ids})
    except ValueError as e:  # text the tokenizer cannot take, or captions it shifted away
        raise ShowtellError(f"{source}: {e}") from e


def caption_split(
    captioner: Captioner, files: list[Path], batch_size: int = 32
) -> tuple[dict[int, str], dict[int, list[str]], dict[int, bytes]]:
    """One beam-search caption per image of the shards, its record references, and
    the image bytes (for the gallery)."""
    references: dict[int, list[str]] = {}
    images: dict[int, bytes] = {}
    for path in files:
        for record in read_caption_records(path):
            words = [
                w
                for w in record.caption
                if w not in (captioner.vocab.start_word, captioner.vocab.end_word)
            ]
            references.setdefault(record.image_id, []).append(" ".join(words))
            images.setdefault(record.image_id, record.image_data)
    preprocess = ImagePreprocessor(captioner.image_config, training=False)
    results: dict[int, str] = {}
    ids = list(images)
    for start in tqdm(
        range(0, len(ids), batch_size), desc="captioning", unit="batch", file=sys.stderr
    ):
        chunk, tensors = [], []
        for image_id in ids[start : start + batch_size]:
            try:
                tensors.append(preprocess(images[image_id]))
                chunk.append(image_id)
            except BadImageError as e:
                logger.warning("image %s: %s", image_id, e)
                results[image_id] = ""
        if tensors:
            for image_id, captions in zip(
                chunk, captioner.caption_images(torch.stack(tensors)), strict=True
            ):
                results[image_id] = captioner.sentence(captions[0]) if captions else ""
    return results, references, images


def write_gallery(
    path: Path,
    results: dict[int, str],
    references: dict[int, list[str]],
    images: dict[int, bytes],
    scores: Scores,
    limit: int,
) -> None:
    """An HTML page of images with their generated and reference captions, worst
    CIDEr-D first; images are written beside it."""
    image_dir = path.parent / "gallery"
    image_dir.mkdir(parents=True, exist_ok=True)
    order = sorted(results, key=lambda i: scores.per_image["CIDEr"][i])[:limit]
    rows = []
    for image_id in order:
        name = f"{image_id}{_extension(images.get(image_id, b''))}"
        (image_dir / name).write_bytes(images.get(image_id, b""))
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in references[image_id])
        rows.append(
            f'<tr><td><img src="gallery/{name}" alt="image {image_id}"></td>'
            f"<td><b>{html.escape(results[image_id]) or '<i>(empty)</i>'}</b>"
            f"<br><small>image {image_id} · CIDEr-D "
            f"{scores.per_image['CIDEr'][image_id]:.3f}</small><ul>{refs}</ul></td></tr>"
        )
    header = "".join(f"<th>{n}</th>" for n in METRIC_NAMES)
    values = "".join(
        f"<td>{'n/a' if scores.corpus[n] is None else f'{scores.corpus[n]:.4f}'}</td>"
        for n in METRIC_NAMES
    )
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>showtell gallery</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{vertical-align:top;padding:6px}"
        "img{min-width:128px;max-width:256px;image-rendering:pixelated}"
        "table.m td,table.m th{border:1px solid #ccc;padding:4px 8px}</style>"
        "<h1>Generated captions, worst CIDEr-D first</h1>"
        f"<table class=m><tr>{header}</tr><tr>{values}</tr></table>"
        f"<p>{len(order)} of {len(results)} images.</p><table>{''.join(rows)}</table>\n"
    )


def _extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return {"JPEG": ".jpg", "PNG": ".png"}.get(image.format or "", ".img")
    except Exception:
        return ".img"


def evaluate_metrics(
    captioner: Captioner,
    input_file_pattern: str,
    eval_dir: Path,
    annotations: Path | None = None,
    batch_size: int = default_of(EvaluateSettings, "batch_size"),
    gallery_size: int = default_of(EvaluateSettings, "gallery_size"),
) -> tuple[Scores, dict[int, str]]:
    """Captions every image of the split and scores them; writes the results file,
    metrics JSON, TensorBoard scalars and the gallery into eval_dir. Returns the
    scores and the caption of each image."""
    from torch.utils.tensorboard import SummaryWriter

    files = expand_file_patterns(input_file_pattern)
    results, references, images = caption_split(captioner, files, batch_size)
    if annotations is not None:
        raw = load_references(annotations)
        references = {i: raw.get(i, references[i]) for i in references}
    scores = score_results(results, references, str(input_file_pattern))
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "captions_results.json").write_text(
        json.dumps([{"image_id": i, "caption": c} for i, c in results.items()]) + "\n"
    )
    step = captioner.checkpoint.step
    info: dict[str, Any] = {
        "checkpoint": str(captioner.checkpoint.path),
        "global_step": step,
        "images": len(results),
        "metrics": scores.corpus,
        "note": scores.meteor_note,
    }
    (eval_dir / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    writer = SummaryWriter(str(eval_dir))
    for name, value in scores.corpus.items():
        if value is not None:
            writer.add_scalar(f"metrics/{name}", value, step)
    writer.close()
    write_gallery(eval_dir / "gallery.html", results, references, images, scores, gallery_size)
    logger.info("%s", format_scores(scores))
    logger.info(
        "Scored %s images at step %d; gallery: %s",
        f"{len(results):,}",
        step,
        eval_dir / "gallery.html",
    )
    return scores, results
