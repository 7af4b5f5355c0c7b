"""`showtell export`: a checkpoint as two ONNX graphs, as deployment wants them.

    encoder.onnx   images (B, 3, H, W) float in [-1, 1] -> h, c (B, units): the LSTM
                   state after the image step (encoder + image embedding + first step),
                   and, for a model that attends, memory (B, L, units)
    step.onnx      tokens (N,) int64, h, c (N, units)[, memory] -> log_probs (N, V), h, c
    word_counts.txt, and export.json: preprocessing, beam settings, special word ids

Both graphs have a dynamic batch dimension. `OnnxCaptioner` runs them with ONNX
Runtime and the same beam search as PyTorch (`generation.beam_search`, which only
needs a step function), so the exported model captions exactly as the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from showtell import __version__
from showtell.checkpoint import load_checkpoint
from showtell.config import ImageConfig, InferenceConfig
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.vocab import Vocabulary
from showtell.errors import ShowtellError
from showtell.generation import Caption, beam_search
from showtell.model import ShowAndTell

EXPORT_JSON = "export.json"
STATE_NAMES = ("h", "c", "memory")  # the graphs' state: the LSTM's, the attention's memory


class _Encode(nn.Module):
    def __init__(self, model: ShowAndTell) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.initial_state(self.model.encoder(images))


class _Step(nn.Module):
    def __init__(self, model: ShowAndTell) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_probs, (h, c, *_) = self.model.step(tokens, state)
        return log_probs, h, c  # the memory, if any, stays as it is


def export_onnx(
    checkpoint_path: str | Path,
    output_dir: Path,
    inference: InferenceConfig | None = None,
    vocab_file: str | Path | None = None,
) -> Path:
    """Writes encoder.onnx, step.onnx, word_counts.txt and export.json to output_dir.
    `vocab_file`: for an im2txt (TensorFlow) checkpoint, which carries no vocabulary."""
    checkpoint = load_checkpoint(checkpoint_path, vocab_file=vocab_file)
    model = checkpoint.build_model()
    image = checkpoint.model_config.image
    units = checkpoint.model_config.num_lstm_units
    output_dir.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    state = [torch.zeros(3, units), torch.zeros(3, units)]  # h, c
    if model.memory_shape:
        state.append(torch.zeros(3, model.memory_shape[0], units))
    state_names = STATE_NAMES[: len(state)]
    with torch.no_grad():
        torch.onnx.export(
            _Encode(model),
            (torch.zeros(2, 3, image.height, image.width),),
            str(output_dir / "encoder.onnx"),
            input_names=["images"],
            output_names=list(state_names),
            dynamic_shapes={"images": {0: batch}},
            dynamo=True,
        )
        torch.onnx.export(
            _Step(model),
            (torch.zeros(3, dtype=torch.int64), *state),
            str(output_dir / "step.onnx"),
            input_names=["tokens", *state_names],
            output_names=["log_probs", "h_out", "c_out"],
            dynamic_shapes=({0: batch}, ({0: batch},) * len(state)),
            dynamo=True,
        )
    checkpoint.vocab.save(output_dir / "word_counts.txt")
    info = {
        "showtell_version": __version__,
        "checkpoint": str(checkpoint.path),
        "global_step": checkpoint.step,
        "image": dataclasses.asdict(image),
        "inference": dataclasses.asdict(inference or InferenceConfig()),
        "start_id": checkpoint.vocab.start_id,
        "end_id": checkpoint.vocab.end_id,
        "vocabulary": checkpoint.vocab.markers,  # start, end and unknown words
        "vocab_size": checkpoint.model_config.vocab_size,
        "num_lstm_units": units,
        "state": list(state_names),
    }
    (output_dir / EXPORT_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return output_dir


class OnnxCaptioner:
    """Beam search over the exported graphs with ONNX Runtime."""

    def __init__(self, export_dir: str | Path) -> None:
        import onnxruntime

        export_dir = Path(export_dir)
        try:
            self.info: dict[str, Any] = json.loads((export_dir / EXPORT_JSON).read_text())
        except (OSError, ValueError) as e:
            raise ShowtellError(f"{export_dir}: not a showtell ONNX export ({e})") from e
        self.vocab = Vocabulary.load(
            export_dir / "word_counts.txt", **self.info.get("vocabulary", {})
        )
        self.inference = InferenceConfig(**self.info["inference"])
        image = self.info["image"]
        image["saturation_range"] = tuple(image["saturation_range"])
        image["contrast_range"] = tuple(image["contrast_range"])
        self.preprocess = ImagePreprocessor(ImageConfig(**image), training=False)
        self.encoder = onnxruntime.InferenceSession(str(export_dir / "encoder.onnx"))
        self.decoder = onnxruntime.InferenceSession(str(export_dir / "step.onnx"))

    def _step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        names = self.info.get("state", ["h", "c"])  # exports before attention: h, c
        inputs = {name: s.numpy() for name, s in zip(names, state, strict=True)}
        log_probs, h, c = self.decoder.run(None, {"tokens": tokens.numpy(), **inputs})
        return torch.from_numpy(log_probs), (torch.from_numpy(h), torch.from_numpy(c), *state[2:])

    def caption_images(self, images: np.ndarray | torch.Tensor) -> list[list[Caption]]:
        """(B, 3, H, W) preprocessed images -> each image's captions (token ids)."""
        images = images.numpy() if isinstance(images, torch.Tensor) else images
        state = self.encoder.run(None, {"images": images.astype(np.float32)})
        return beam_search(
            self._step,
            tuple(torch.from_numpy(s) for s in state),
            self.info["start_id"],
            self.info["end_id"],
            self.inference.beam_size,
            self.inference.max_caption_length,
            self.inference.length_normalization_factor,
        )
