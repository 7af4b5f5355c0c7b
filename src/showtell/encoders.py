"""Image encoders: an image in [-1, 1] (im2txt's scaling) -> a feature vector.

- `inception_v3` (im2txt's): torchvision's Inception v3 pooled to 2048-d. Its ImageNet
  weights were ported from TensorFlow and expect inputs in [-1, 1], which is what
  torchvision's `transform_input=True` converts ImageNet-normalised inputs into; our
  inputs are already in [-1, 1], so the model is built with `transform_input=False`
  and sees exactly what it was trained on. Batch-norm uses TensorFlow's epsilon
  (0.001) and, when trained, im2txt's decay (0.9997).
- any other torchvision classifier by name (`resnet50`, `efficientnet_b0`, ...): its
  classification layer removed, inputs converted from [-1, 1] to ImageNet
  normalisation.
- `cnn_small`: four conv + max-pool blocks and a 4x4 spatial map flattened to 2048-d;
  fast on CPUs, keeps where things are (for the synthetic scenes). Max-pooling rather
  than strided convolutions: its features tell small shapes apart better, random
  (a linear probe: 81% vs 72% of shapes) and trained (benchmarks/README.md).

Any of them may carry a *label head* (`ModelConfig.encoder_label_head`): the linear
classifier that `showtell pretrain-encoder` trains on the encoder's features, one
softmax per label slot (the synthetic scenes: 9 grid cells x 33 classes). Its class
probabilities are appended to the features, so the decoder receives what the encoder
recognised as well as the features it recognised it from (predicted labels as the image
input, as attribute-based captioners do). Without it the decoder must itself learn which
colour goes with which shape from features that code them separately.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from showtell.config import ImageConfig
from showtell.errors import ShowtellError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    output_dim: int
    image: ImageConfig  # the input size the encoder was designed for


class Encoder(nn.Module):
    """Wraps a backbone: (B, 3, H, W) in [-1, 1] -> (B, output_dim): the backbone's
    `feature_dim` pooled features, then the label head's `label_slots * label_classes`
    probabilities when it has one."""

    def __init__(self, name: str, backbone: nn.Module, feature_dim: int, imagenet_norm: bool):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.dropout = nn.Dropout(0.0)  # after pooling; active only when the encoder trains
        self.feature_dim = feature_dim
        self.label_slots = self.label_classes = 0
        self.label_head: nn.Linear | None = None
        self.imagenet_norm = imagenet_norm
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def add_label_head(self, slots: int, classes: int) -> None:
        """A linear classifier on the features, `classes` per slot (see the module doc)."""
        self.label_slots, self.label_classes = slots, classes
        self.label_head = nn.Linear(self.feature_dim, slots * classes)

    @property
    def output_dim(self) -> int:
        """Size of `forward`'s output: the features, then the label probabilities."""
        return self.feature_dim + self.label_slots * self.label_classes

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images  # (B, 3, H, W) in [-1, 1]
        if self.imagenet_norm:
            x = ((x + 1.0) * 0.5 - self.mean) / self.std
        return self.backbone(x).flatten(1)  # (B, F)

    def label_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) backbone features -> (B, slots, classes) label-head logits."""
        assert self.label_head is not None, "this encoder has no label head"
        return self.label_head(features).view(-1, self.label_slots, self.label_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone_features(images)  # (B, F)
        if self.label_head is not None:
            probs = self.label_logits(features).softmax(-1)  # (B, S, C)
            features = torch.cat([features, probs.flatten(1)], 1)  # (B, F + S * C)
        return self.dropout(features)  # (B, D)


@torch.no_grad()
def calibrate_batch_norm(encoder: Encoder, batches: Iterable[torch.Tensor]) -> int:
    """Sets every batch-norm layer's running statistics to their average over the given
    image batches (a data-dependent initialisation for encoders without pretrained
    weights). Without it a random encoder's running statistics are (0, 1), so its
    eval-mode features (phase 1) and train-mode features (phase 2) differ wildly and
    fine-tuning starts from features the decoder has never seen. Returns the number
    of images used."""
    layers = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    was_training = encoder.training
    encoder.train()
    images = 0
    for batch in batches:
        encoder(batch)
        images += len(batch)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    encoder.train(was_training)
    return images


def _cnn_small() -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(
        *block(3, 32),  # (B, 32, H/2, W/2)
        *block(32, 64),  # (B, 64, H/4, W/4)
        *block(64, 128),  # (B, 128, H/8, W/8)
        *block(128, 128),  # (B, 128, H/16, W/16)
        nn.AdaptiveAvgPool2d(4),  # (B, 128, 4, 4): keeps a coarse map of where things are
        nn.Flatten(),  # (B, 2048)
    )


def _strip_classifier(model: nn.Module, name: str) -> tuple[nn.Module, int]:
    """Removes a torchvision classifier's last layers; returns (model, feature size)."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        model.fc = nn.Identity()
        return model, fc.in_features
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential):
        for index, layer in enumerate(classifier):
            if isinstance(layer, nn.Linear):
                model.classifier = nn.Sequential(*classifier[:index], nn.Flatten())
                return model, layer.in_features
    raise ShowtellError(f"--encoder {name}: cannot find its classification layer to remove")


def encoder_spec(name: str) -> EncoderSpec:
    """Output size and default input size of an encoder, without building it."""
    if name == "inception_v3":
        return EncoderSpec(2048, ImageConfig())
    if name == "cnn_small":
        return EncoderSpec(
            2048, ImageConfig(resize_height=72, resize_width=72, height=64, width=64)
        )
    return EncoderSpec(
        build_encoder(name).output_dim,
        ImageConfig(resize_height=256, resize_width=256, height=224, width=224),
    )


def build_encoder(
    name: str,
    batch_norm_decay: float = 0.9997,
    dropout: float = 0.0,
    label_head: tuple[int, ...] = (),
) -> Encoder:
    """A randomly initialised encoder, with a label head of (slots, classes) when given;
    weights are loaded by `load_pretrained`."""
    encoder = _build_encoder(name, batch_norm_decay)
    encoder.dropout.p = dropout
    if label_head:
        encoder.add_label_head(*label_head)
    return encoder


def _build_encoder(name: str, batch_norm_decay: float) -> Encoder:
    if name == "cnn_small":
        return Encoder(name, _cnn_small(), 2048, imagenet_norm=False)
    if name == "inception_v3":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            backbone = torchvision.models.inception_v3(
                weights=None, aux_logits=False, transform_input=False, init_weights=True
            )
        backbone.fc = nn.Identity()  # (B, 2048) after pooling
        backbone.dropout = nn.Identity()  # the Encoder's own dropout replaces it
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 1.0 - batch_norm_decay
        return Encoder(name, backbone, 2048, imagenet_norm=False)
    try:
        backbone = torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise ShowtellError(
            f"--encoder {name}: not a torchvision model (e.g. inception_v3, resnet50, "
            "efficientnet_b0) nor cnn_small"
        ) from e
    backbone, dim = _strip_classifier(backbone, name)
    return Encoder(name, backbone, dim, imagenet_norm=True)


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
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
    the classifier and Inception's auxiliary head; and the label head (`label_head.`
    keys, as `pretrain-encoder` writes them) when the encoder has one."""
    head: dict[str, torch.Tensor] = {}
    body: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("label_head."):
            head[key.removeprefix("label_head.")] = value
        else:
            body[key.removeprefix("backbone.")] = value
    if encoder.label_head is not None:
        _load_label_head(encoder, head, source)
    ignored = ("fc.", "AuxLogits.", "classifier.")
    state = {k: v for k, v in body.items() if not k.startswith(ignored)}
    result = encoder.backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(ignored)]
    if missing or result.unexpected_keys:
        raise ShowtellError(
            f"{source}: weights do not fit --encoder {encoder.name}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )


def _load_label_head(encoder: Encoder, state: dict[str, torch.Tensor], source: str) -> None:
    assert encoder.label_head is not None
    wanted = f"{encoder.label_slots} slots x {encoder.label_classes} classes"
    if not state:
        raise ShowtellError(
            f"{source}: has no label head, and the model config asks for one "
            f"(encoder_label_head: {wanted}); pass the weights `showtell pretrain-encoder` "
            "wrote, or leave encoder_label_head out"
        )
    weight = state.get("weight")
    if weight is None or tuple(weight.shape) != tuple(encoder.label_head.weight.shape):
        found = "none" if weight is None else "x".join(map(str, weight.shape))
        raise ShowtellError(
            f"{source}: its label head ({found} weights) does not fit the model config's "
            f"encoder_label_head ({wanted} on {encoder.feature_dim} features)"
        )
    encoder.label_head.load_state_dict(state)


def load_pretrained(encoder: Encoder, checkpoint_file: str = "") -> str:
    """Initialises the encoder from a file, else from torchvision's ImageNet weights
    (downloaded into torch's cache when a network is there). Returns what was loaded;
    warns and returns "random" when neither is available."""
    if checkpoint_file:
        load_encoder_weights(encoder, _load_state_dict_file(Path(checkpoint_file)), checkpoint_file)
        return checkpoint_file
    if encoder.label_head is not None:
        raise ShowtellError(
            "encoder_label_head needs a trained label head: pass the weights "
            "`showtell pretrain-encoder` wrote as --inception_checkpoint_file"
        )
    if encoder.name == "cnn_small":
        return "random (cnn_small has no published weights; see pretrain-encoder)"
    try:
        weights = torchvision.models.get_model_weights(encoder.name).DEFAULT
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            state = weights.get_state_dict(progress=False)
        finally:
            socket.setdefaulttimeout(previous)
    except Exception as e:  # no network, no such weights: both end the same way
        warnings.warn(
            f"no weights for encoder {encoder.name}: no --inception_checkpoint_file given and "
            f"torchvision's ImageNet weights could not be downloaded ({type(e).__name__}); "
            "the encoder starts from random weights",
            stacklevel=2,
        )
        return "random"
    load_encoder_weights(encoder, state, f"torchvision {weights}")
    return f"torchvision {weights}"
