"""im2txt's image preprocessing (`ops/image_processing.py`) on PyTorch tensors.

decode to 3 channels, float in [0, 1] -> bilinear resize to 346x346 (aspect not kept;
   PyTorch's, or TensorFlow 1's exactly with `ImageConfig.resize_method="tf1"`)
-> training: random 299x299 crop, random flip, colour distortion in one of im2txt's
   two orders; evaluation: central 299x299 crop
-> clip to [0, 1] -> scale to [-1, 1] with (x - 0.5) * 2.

Brightness and contrast follow TensorFlow's definitions (additive delta; per-channel
mean). Saturation uses torchvision's blend with the greyscale image, where
TensorFlow scaled HSV saturation: the same range of effect, not the same pixels;
these distortions are augmentation, and the two agree at factor 1.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from showtell.config import ImageConfig
from showtell.data.images import load_rgb


def decode_rgb(
    data: bytes, apply_exif_orientation: bool = False, max_pixels: int | None = None
) -> torch.Tensor:
    """Encoded image bytes -> (3, H, W) uint8 RGB; raises BadImageError with the reason.

    Images over `max_pixels` (default: the one setting `images.max_image_pixels()`, which
    training, evaluation and export use) are refused before they are decoded.
    """
    image = load_rgb(data, apply_exif_orientation=apply_exif_orientation, max_pixels=max_pixels)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, H, W)


def _distort_colours(x: torch.Tensor, config: ImageConfig, rng: random.Random) -> torch.Tensor:
    """x: (3, H, W) float in [0, 1]."""

    def brightness(x: torch.Tensor) -> torch.Tensor:
        d = config.brightness_max_delta
        return (x + rng.uniform(-d, d)).clamp_(0.0, 1.0)

    def saturation(x: torch.Tensor) -> torch.Tensor:
        return TF.adjust_saturation(x, rng.uniform(*config.saturation_range))

    def hue(x: torch.Tensor) -> torch.Tensor:
        d = config.hue_max_delta
        return TF.adjust_hue(x, rng.uniform(-d, d))

    def contrast(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2), keepdim=True)  # (3, 1, 1): TensorFlow's per-channel mean
        return ((x - mean) * rng.uniform(*config.contrast_range) + mean).clamp_(0.0, 1.0)

    # im2txt alternated between these two orders (by preprocessing thread).
    order = (
        (brightness, saturation, hue, contrast)
        if rng.random() < 0.5
        else (brightness, contrast, saturation, hue)
    )
    for op in order:
        x = op(x)
    return x


def resize_bilinear_tf1(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """TensorFlow 1's `resize_bilinear` (align_corners=False, no half-pixel centres), the
    resize im2txt used: output pixel y samples input row y * in/out (not the centre
    convention of PyTorch and TF2), rows past the end clamped to the last. Computed as
    TensorFlow's kernel does, in float32: lerp along x on the two rows, then along y.
    x: (C, H, W) float -> (C, height, width)."""

    def source(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / out_size, dtype=torch.float32)
        position = torch.arange(out_size, dtype=torch.float32) * scale
        low = position.floor().long().clamp(max=in_size - 1)
        return low, (low + 1).clamp(max=in_size - 1), position - low.float()

    top, bottom, y_lerp = source(height, x.shape[-2])
    left, right, x_lerp = source(width, x.shape[-1])
    rows_top, rows_bottom = x[:, top], x[:, bottom]  # (C, height, W)
    upper = rows_top[..., left] + (rows_top[..., right] - rows_top[..., left]) * x_lerp
    lower = rows_bottom[..., left] + (rows_bottom[..., right] - rows_bottom[..., left]) * x_lerp
    return upper + (lower - upper) * y_lerp.unsqueeze(1)


class ImagePreprocessor:
    """Callable: encoded image bytes -> (3, height, width) float tensor in [-1, 1]."""

    def __init__(self, config: ImageConfig, training: bool, seed: int | None = None) -> None:
        self.config = config
        self.training = training
        self.rng = random.Random(seed)

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.from_uint8(decode_rgb(data))

    def from_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, height, width) float in [-1, 1]."""
        c = self.config
        x = image.float().div_(255.0)  # (3, H, W) in [0, 1]
        if c.resize_method == "tf1":
            x = resize_bilinear_tf1(x, c.resize_height, c.resize_width)
        else:
            x = TF.resize(x, [c.resize_height, c.resize_width], antialias=False)  # bilinear
        if self.training:
            top = self.rng.randint(0, c.resize_height - c.height)
            left = self.rng.randint(0, c.resize_width - c.width)
        else:
            top = (c.resize_height - c.height) // 2
            left = (c.resize_width - c.width) // 2
        x = x[:, top : top + c.height, left : left + c.width]  # (3, height, width)
        if self.training:
            if c.random_flip and self.rng.random() < 0.5:
                x = x.flip(-1)
            if c.colour_distortion:
                x = _distort_colours(x, c, self.rng)
        return x.clamp(0.0, 1.0).sub_(0.5).mul_(2.0)
