"""im2txt's own checkpoints (TensorFlow train dirs) as showtell checkpoints.

An im2txt checkpoint holds, besides `global_step`:
    InceptionV3/...            376 variables: the encoder (`tf_import.inception`)
    image_embedding/weights    [2048, E]  -> image_embedding.weight (transposed; no bias)
    seq_embedding/map          [V, E]     -> seq_embedding.weight
    lstm/<cell>/<kernel>       [E + H, 4H]  TF's BasicLSTMCell, named by TF version:
    lstm/<cell>/<bias>         [4H]         see LSTM_NAMES
    logits/weights, biases     [H, V], [V] -> logits.weight (transposed), logits.bias

BasicLSTMCell computes `[x, h] @ kernel + bias`, split into gates i, j, f, o, and adds
a forget bias of 1.0 at run time (not stored). PyTorch's LSTM orders its gates i, f,
g (= j), o and has x and h weights apart. showtell's model holds PyTorch's second
bias (`bias_hh_l0`) at zero and carries the forget bias inside `bias_ih_l0` (see
`showtell.model`), so: rows of kernel^T reordered to i, f, j, o, split at E into
`weight_ih_l0` and `weight_hh_l0`; `bias_ih_l0` = the bias reordered, + 1.0 on f.

im2txt's vocab_size (12,000) is kept although its vocabulary has fewer lines: ids past
the vocabulary's words print as the unknown word, as im2txt printed them. TF
checkpoints carry no vocabulary, so a `word_counts.txt` must be given. Imported models
use im2txt's preprocessing (`ImageConfig.resize_method="tf1"`) so that captions and
probabilities are the ones im2txt printed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from showtell.checkpoint import Checkpoint
from showtell.config import ImageConfig, ModelConfig, to_dict
from showtell.data.vocab import Vocabulary
from showtell.errors import ShowtellError
from showtell.tf_import.inception import inception_state_dict
from showtell.tf_import.reader import (
    TFCheckpoint,
    find_tf_checkpoint,
    read_variables,
    variable_shapes,
)

FORGET_BIAS = 1.0  # BasicLSTMCell's default, which im2txt used
# (kernel, bias) names of the LSTM, by the TensorFlow version that wrote the checkpoint.
LSTM_NAMES = {
    "TF <= 0.12": ("lstm/BasicLSTMCell/Linear/Matrix", "lstm/BasicLSTMCell/Linear/Bias"),
    "TF 1.0-1.1": ("lstm/basic_lstm_cell/weights", "lstm/basic_lstm_cell/biases"),
    "TF >= 1.2": ("lstm/basic_lstm_cell/kernel", "lstm/basic_lstm_cell/bias"),
}
IMAGE_EMBEDDING = "image_embedding/weights"
SEQ_EMBEDDING = "seq_embedding/map"
LOGITS_WEIGHTS, LOGITS_BIASES = "logits/weights", "logits/biases"
# im2txt's preprocessing: TF1's bilinear resize to 346x346, central 299x299 crop.
IM2TXT_IMAGE = ImageConfig(resize_method="tf1")


def is_im2txt(names: set[str] | dict[str, Any]) -> bool:
    return SEQ_EMBEDDING in names and any(name.startswith("lstm/") for name in names)


def lstm_era(names: set[str] | dict[str, Any], source: str) -> str:
    """Which TensorFlow version's LSTM names the checkpoint uses."""
    found = [era for era, (kernel, bias) in LSTM_NAMES.items() if {kernel, bias} <= set(names)]
    if len(found) != 1:
        lstm = sorted(name for name in names if name.startswith("lstm/"))
        raise ShowtellError(
            f"{source}: cannot tell its LSTM variables ({', '.join(lstm[:4]) or 'none'}) "
            "as those of TensorFlow's BasicLSTMCell"
        )
    return found[0]


def _shape(shapes: dict[str, tuple[int, ...]], name: str, ndim: int, source: str) -> tuple:
    if name not in shapes:
        raise ShowtellError(f"{source}: no variable {name}: not an im2txt checkpoint")
    if len(shapes[name]) != ndim:
        raise ShowtellError(f"{source}: {name} has shape {list(shapes[name])}, expected {ndim}-d")
    return shapes[name]


def im2txt_model_config(shapes: dict[str, tuple[int, ...]], source: str) -> ModelConfig:
    """The ModelConfig of an im2txt checkpoint, sizes read from its variables' shapes."""
    vocab_size, embedding_size = _shape(shapes, SEQ_EMBEDDING, 2, source)
    kernel = _shape(shapes, LSTM_NAMES[lstm_era(shapes, source)][0], 2, source)
    units = kernel[1] // 4
    expected = {
        IMAGE_EMBEDDING: (2048, embedding_size),
        LSTM_NAMES[lstm_era(shapes, source)][0]: (embedding_size + units, 4 * units),
        LSTM_NAMES[lstm_era(shapes, source)][1]: (4 * units,),
        LOGITS_WEIGHTS: (units, vocab_size),
        LOGITS_BIASES: (vocab_size,),
    }
    for name, shape in expected.items():
        if tuple(_shape(shapes, name, len(shape), source)) != shape:
            raise ShowtellError(
                f"{source}: {name} has shape {list(shapes[name])}, expected {list(shape)} "
                f"(vocabulary {vocab_size}, embedding {embedding_size}, LSTM {units})"
            )
    return ModelConfig(
        encoder="inception_v3",
        vocab_size=vocab_size,
        embedding_size=embedding_size,
        num_lstm_units=units,
        image=dataclasses.replace(IM2TXT_IMAGE),
    )


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(value, dtype=np.float32))


def lstm_weights(kernel: np.ndarray, bias: np.ndarray, input_size: int) -> dict[str, torch.Tensor]:
    """TF BasicLSTMCell (kernel [E + H, 4H], bias [4H]; gates i, j, f, o; forget bias
    added at run time) -> showtell's nn.LSTM parameters (gates i, f, g, o)."""
    w, b = _tensor(kernel).T, _tensor(bias)  # (4H, E + H), (4H,)
    i, j, f, o = w.chunk(4, 0)
    bi, bj, bf, bo = b.chunk(4, 0)
    w = torch.cat([i, f, j, o], 0)
    return {
        "lstm.weight_ih_l0": w[:, :input_size].contiguous(),
        "lstm.weight_hh_l0": w[:, input_size:].contiguous(),
        "lstm.bias_ih_l0": torch.cat([bi, bf + FORGET_BIAS, bj, bo]),
        "lstm.bias_hh_l0": torch.zeros_like(b),
    }


def im2txt_state_dict(
    variables: dict[str, np.ndarray], config: ModelConfig, source: str
) -> dict[str, torch.Tensor]:
    """Every im2txt variable in its place in a ShowAndTell state dict. Any variable left
    over (other than global_step) is an error: nothing of a checkpoint is dropped."""
    encoder, used = inception_state_dict(variables, source)
    state = {f"encoder.backbone.{key}": value for key, value in encoder.items()}
    kernel, bias = LSTM_NAMES[lstm_era(variables, source)]
    used |= {IMAGE_EMBEDDING, SEQ_EMBEDDING, kernel, bias, LOGITS_WEIGHTS, LOGITS_BIASES}
    left = sorted(set(variables) - used - {"global_step"})
    if left:
        raise ShowtellError(
            f"{source}: {len(left)} variables are not im2txt's (e.g. {', '.join(left[:3])})"
        )
    state.update(
        {
            "feature_mean": torch.zeros(2048),  # im2txt used the features as they are
            "feature_std": torch.ones(2048),
            "image_embedding.weight": _tensor(variables[IMAGE_EMBEDDING]).T.contiguous(),
            "seq_embedding.weight": _tensor(variables[SEQ_EMBEDDING]),
            **lstm_weights(variables[kernel], variables[bias], config.embedding_size),
            "logits.weight": _tensor(variables[LOGITS_WEIGHTS]).T.contiguous(),
            "logits.bias": _tensor(variables[LOGITS_BIASES]),
        }
    )
    return state


@dataclass
class ImportedCheckpoint(Checkpoint):
    """An im2txt checkpoint read into memory: a Checkpoint like a native one."""

    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.state

    def train_state(self) -> dict[str, Any]:
        """Only the step: im2txt's SGD keeps no optimizer state, and the data order of
        TensorFlow's queues cannot be resumed, so training goes on from a fresh pass."""
        return {"global_step": self.step}


def _vocabulary(vocab: str | Path | Vocabulary | None, source: str, vocab_size: int) -> Vocabulary:
    if vocab is None or vocab == "":
        raise ShowtellError(
            f"{source}: an im2txt (TensorFlow) checkpoint carries no vocabulary: "
            "give --vocab_file (its word_counts.txt)"
        )
    vocabulary = vocab if isinstance(vocab, Vocabulary) else Vocabulary.load(vocab)
    if len(vocabulary) > vocab_size:
        raise ShowtellError(
            f"{vocab if not isinstance(vocab, Vocabulary) else 'the vocabulary'}: "
            f"{len(vocabulary)} ids (with <UNK>), more than the {vocab_size} rows of "
            f"{source}'s word embedding: not the vocabulary this model was trained with"
        )
    return vocabulary


def load_im2txt_checkpoint(
    path: str | Path | TFCheckpoint, vocab: str | Path | Vocabulary | None
) -> ImportedCheckpoint:
    """Reads an im2txt checkpoint (a train dir with a `checkpoint` file, a
    `model.ckpt-N` prefix, or a V1 file) with its vocabulary."""
    checkpoint = path if isinstance(path, TFCheckpoint) else find_tf_checkpoint(path)
    if checkpoint is None:
        raise ShowtellError(f"{path}: no TensorFlow checkpoint found")
    source = str(checkpoint)
    shapes = variable_shapes(checkpoint)
    if not is_im2txt(shapes):
        raise ShowtellError(
            f"{source}: a TensorFlow checkpoint, but not of an im2txt model "
            "(no seq_embedding/map and lstm/ variables)"
        )
    config = im2txt_model_config(shapes, source)
    vocabulary = _vocabulary(vocab, source, config.vocab_size)
    variables = read_variables(checkpoint)
    step = variables.get("global_step")
    global_step = int(step) if step is not None else (checkpoint.step or 0)
    info = {
        "model": to_dict(config),
        "global_step": global_step,
        "imported_from": source,
        "tensorflow_lstm_names": lstm_era(shapes, source),
    }
    return ImportedCheckpoint(
        checkpoint.prefix,
        global_step,
        config,
        vocabulary,
        info,
        state=im2txt_state_dict(variables, config, source),
    )


def convert_im2txt_checkpoint(
    checkpoint_path: str | Path, vocab_file: str | Path, output_dir: str | Path
) -> Path:
    """Writes an im2txt checkpoint as a native showtell checkpoint in `output_dir` (a
    train dir: `output_dir/model.ckpt-N/` and its `checkpoint` file); later runs then
    need no TensorFlow. Returns the checkpoint folder."""
    from showtell.checkpoint import save_checkpoint
    from showtell.model import ShowAndTell

    imported = load_im2txt_checkpoint(checkpoint_path, vocab_file)
    model = ShowAndTell(imported.model_config)
    model.load_state_dict(imported.model_state())  # strict: every parameter in its place
    return save_checkpoint(
        Path(output_dir),
        imported.step,
        model,
        imported.model_config,
        imported.vocab,
        imported.train_state(),
        {k: v for k, v in imported.info.items() if k not in ("model", "global_step")},
        max_to_keep=1_000_000,
    )
