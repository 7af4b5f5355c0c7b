"""The tests' own expectation for captioning, written apart from the code under test.

`reference_beam_search` is im2txt's `CaptionGenerator.beam_search`
(`inference_utils/caption_generator.py`) for ONE image, written out plainly with lists
and Python floats (with the top-k it intended). `ReferenceCaptioner` reads a showtell
checkpoint folder by hand (the `checkpoint` index file, `config.json`,
`model.safetensors`, `word_counts.txt`), preprocesses an image with Pillow and
`torch.nn.functional.interpolate` as im2txt's evaluation path did, and runs that
reference beam search image by image: run-inference, serve and the batched beam search
are compared with it, never with `showtell.inference.Captioner`.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file

State = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


@dataclass(frozen=True)
class RefCaption:
    tokens: tuple[int, ...]  # from the start word
    logprob: float
    score: float


@dataclass
class RefResult:
    captions: list[RefCaption]  # best first
    rows_per_step: list[int] = field(default_factory=list)  # partial captions fed to each step

    @property
    def steps(self) -> int:
        """How many steps the image took part in: it finished after the last one."""
        return len(self.rows_per_step)


def reference_beam_search(
    step: StepFn,
    state: State,
    start_id: int,
    end_id: int,
    beam_size: int = 3,
    max_caption_length: int = 20,
    length_normalization_factor: float = 0.0,
) -> RefResult:
    """im2txt's per-image beam search. `state`: one image's state tensors (no batch
    dimension); `step` gets (N,) ids and (N, ...) states, returns (N, V) log-probs.

    Ties: Python's sorts are stable, so among equal probabilities the lower word id
    comes first, and among equal scores the caption that entered its set earlier wins
    (the existing completed captions before the new ones; new ones by parent, then word).
    """
    # (score, logprob, sentence, state): im2txt's Caption, best first.
    partial: list[tuple[float, float, list[int], State]] = [(0.0, 0.0, [start_id], state)]
    complete: list[tuple[float, float, list[int]]] = []
    result = RefResult([])
    for _ in range(max_caption_length - 1):
        result.rows_per_step.append(len(partial))
        log_probs, new_states = step(
            torch.tensor([p[2][-1] for p in partial]),
            tuple(torch.stack(parts) for parts in zip(*(p[3] for p in partial), strict=True)),
        )
        new_partial, new_complete = [], []
        for i, (_, logprob, sentence, _) in enumerate(partial):
            row = log_probs[i].double().tolist()
            best = sorted(range(len(row)), key=lambda w: -row[w])[:beam_size]
            for w in best:
                if math.exp(row[w]) < 1e-12:
                    continue  # im2txt: "Avoid log(0)."
                words, lp = [*sentence, w], logprob + row[w]
                if w == end_id:
                    score = lp
                    if length_normalization_factor > 0:
                        score /= len(words) ** length_normalization_factor
                    new_complete.append((score, lp, words))
                else:
                    new_partial.append((lp, lp, words, tuple(s[i] for s in new_states)))
        complete = sorted(complete + new_complete, key=lambda c: -c[0])[:beam_size]
        partial = sorted(new_partial, key=lambda c: -c[0])[:beam_size]
        if not partial:  # im2txt: "We have run out of partial candidates"
            break
    # "If we have no complete captions then fall back to the partial captions."
    chosen = complete if complete else [(p[0], p[1], p[2]) for p in partial]
    result.captions = [RefCaption(tuple(c[2]), c[1], c[0]) for c in chosen]
    return result


def assert_same_captions(got: Sequence, want: Sequence[RefCaption], tol: float = 1e-9) -> None:
    """Same tokens in the same order; log-probabilities and scores within `tol`."""
    assert [tuple(c.tokens) for c in got] == [c.tokens for c in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g.logprob - w.logprob) <= tol, (g, w)
        assert abs(g.score - w.score) <= tol, (g, w)


class ReferenceCaptioner:
    """A showtell train_dir's newest checkpoint, read and run without showtell's
    checkpoint reader, preprocessing, beam search or Captioner (only its model class)."""

    def __init__(
        self,
        train_dir: Path,
        beam_size: int = 3,
        max_caption_length: int = 20,
        length_normalization_factor: float = 0.0,
    ) -> None:
        from showtell.config import model_config_from_dict
        from showtell.model import ShowAndTell

        folder = train_dir / (train_dir / "checkpoint").read_text().strip()
        saved = json.loads((folder / "config.json").read_text())
        config = saved["model"]
        self.image = config["image"]
        assert self.image.get("resize_method", "torchvision") == "torchvision"
        self.model = ShowAndTell(model_config_from_dict(config))
        self.model.load_state_dict(load_file(folder / "model.safetensors"))
        self.model.eval()
        lines = (folder / "word_counts.txt").read_text().splitlines()
        self.words = [line.rsplit(" ", 1)[0] for line in lines if line.strip()]
        # The markers are not in word_counts.txt; checkpoints keep them (im2txt's default).
        markers = {"start_word": "<S>", "end_word": "</S>", "unknown_word": "<UNK>"}
        markers.update(saved.get("vocabulary", {}))
        self.start_id = self.words.index(markers["start_word"])
        self.end_id = self.words.index(markers["end_word"])
        self.unknown_word = markers["unknown_word"]
        self.beam_size = beam_size
        self.max_caption_length = max_caption_length
        self.length_normalization_factor = length_normalization_factor

    def preprocess(self, data: bytes) -> torch.Tensor:
        """im2txt's evaluation path: decode to RGB in [0, 1], bilinear resize (aspect
        not kept; pixel centres aligned, no antialiasing), central crop, to [-1, 1]."""
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        size = (self.image["resize_height"], self.image["resize_width"])
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        h, w = self.image["height"], self.image["width"]
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        x = x[:, top : top + h, left : left + w]
        return (x.clamp(0.0, 1.0) - 0.5) * 2.0

    def captions(self, data: bytes) -> list[tuple[str, float]]:
        """(sentence, log-probability) of the image's captions, best first. The sentence
        drops the start word and a final end word (showtell keeps the last word of a
        caption that never ended, where im2txt cut it: a documented difference)."""
        with torch.inference_mode():
            state = self.model.encode(self.preprocess(data)[None])
            result = reference_beam_search(
                self.model.step,
                tuple(s[0] for s in state),
                self.start_id,
                self.end_id,
                self.beam_size,
                self.max_caption_length,
                self.length_normalization_factor,
            )
        out = []
        for c in result.captions:
            ids = list(c.tokens[1:])
            if ids and ids[-1] == self.end_id:
                ids = ids[:-1]
            out.append((" ".join(self._word(i) for i in ids), c.logprob))
        return out

    def _word(self, word_id: int) -> str:
        return self.words[word_id] if word_id < len(self.words) else self.unknown_word

    def printed(self, name: str, data: bytes) -> list[str]:
        """im2txt's run_inference output for one image."""
        lines = [f"Captions for image {name}:"]
        for i, (sentence, logprob) in enumerate(self.captions(data)):
            lines.append(f"  {i}) {sentence} (p={math.exp(logprob):f})")
        return lines


_P = re.compile(r" \(p=(\d+\.\d{6})\)$")


def assert_printed_same(got: Sequence[str], want: Sequence[str], p_tol: float = 1e-6) -> None:
    """run-inference lines against the reference's: the same text line by line, and each
    printed p within `p_tol` (the last printed digit may round the other way: the model
    runs in float32, on a batch of images here and on one image there)."""
    assert [_P.sub(" (p=)", line) for line in got] == [_P.sub(" (p=)", line) for line in want]
    for g, w in zip(got, want, strict=True):
        if _P.search(w):
            p_got, p_want = (float(_P.search(line).group(1)) for line in (g, w))
            assert abs(p_got - p_want) <= p_tol + 1e-12, (g, w)
