"""Backbones from torchvision (as `timm_backbones` is for timm): im2txt's Inception v3
made to compute what TF-slim's computed, and any torchvision classifier by name with its
classification layer removed. `encoders.py` turns these into registry entries.
"""

from __future__ import annotations

import socket
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from showtell.errors import ShowtellError

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def strip_classifier(model: nn.Module, name: str) -> tuple[nn.Module, int]:
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


def _exclude_padding(module: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    """Forward pre-hook of a `branch_pool` conv: its input is torchvision's 3x3 average
    (stride 1, padding 1) that counted padded cells; dividing by the same pool of ones
    (the share of real cells, k/9) makes it the mean over real cells only, TF's."""
    (x,) = args
    real = F.avg_pool2d(torch.ones_like(x[:1, :1]), kernel_size=3, stride=1, padding=1)
    return (x / real,)


def _pool_as_tf_slim(backbone: nn.Module) -> None:
    """Makes Inception3's average pools (InceptionA, C, E: 3x3, stride 1, SAME padding)
    exclude padded cells, as TF-slim's avg_pool2d does; torchvision's (functional
    F.avg_pool2d calls) include them (count_include_pad).

    Always, not as a mode: `inception_v3` is im2txt's encoder, TF-slim's InceptionV3,
    and both weight sources learned with TF's pooling: TF-slim's checkpoints, and
    torchvision's ImageNet weights, which were ported from TensorFlow (counting padding
    is a porting shortcut there). So TF checkpoints compute exactly what TF computed
    (tests/test_tf_inception.py checks against TensorFlow), and one definition of the
    encoder means no checkpoint can be trained one way and run the other."""
    blocks = (
        torchvision.models.inception.InceptionA,
        torchvision.models.inception.InceptionC,
        torchvision.models.inception.InceptionE,
    )
    for module in backbone.modules():
        if isinstance(module, blocks):
            module.branch_pool.register_forward_pre_hook(_exclude_padding)


def inception_v3() -> nn.Module:
    """im2txt's encoder: torchvision's Inception v3 up to its 2048-d pooled features, with
    TF-slim's average pooling; batch-norm momentum is set by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        backbone = torchvision.models.inception_v3(
            weights=None, aux_logits=False, transform_input=False, init_weights=True
        )
    backbone.fc = nn.Identity()  # (B, 2048) after pooling
    backbone.dropout = nn.Identity()  # the Encoder's own dropout replaces it
    _pool_as_tf_slim(backbone)
    return backbone


def classifier_backbone(name: str) -> nn.Module:
    """A randomly initialised torchvision classifier without its classification layer."""
    return strip_classifier(torchvision.models.get_model(name, weights=None), name)[0]


@dataclass(frozen=True)
class TorchvisionInfo:
    """What a torchvision classifier and its default weights' transforms say about it."""

    feature_dim: int
    size: int  # the crop's side
    resize: int  # the side images are resized to before cropping
    norm: tuple[tuple[float, float, float], tuple[float, float, float]]


def torchvision_info(name: str) -> TorchvisionInfo:
    """Feature size and preprocessing of a torchvision classifier, without allocating it;
    ValueError when torchvision has no such model."""
    with torch.device("meta"):  # the feature size without allocating the network
        _, dim = strip_classifier(torchvision.models.get_model(name, weights=None), name)
    size, resize, norm = 224, 256, IMAGENET_NORM
    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        size, resize = transforms.crop_size[0], transforms.resize_size[0]
        norm = (tuple(transforms.mean), tuple(transforms.std))
    except (ValueError, AttributeError, IndexError):
        pass  # no published weights: ImageNet's usual 224 of 256
    return TorchvisionInfo(feature_dim=dim, size=size, resize=resize, norm=norm)


def torchvision_weights(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet weights, downloaded into torch's cache when a network is
    there (a 30 s socket timeout: no network fails fast instead of hanging)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        return weights.get_state_dict(progress=False), f"torchvision {weights}"
    finally:
        socket.setdefaulttimeout(previous)
