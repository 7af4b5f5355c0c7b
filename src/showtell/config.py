"""Configuration dataclasses. Defaults are im2txt's (its `configuration.py`), each
field documented with what it means."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ImageConfig:
    """How an encoded image becomes the encoder's input (im2txt's `process_image`).

    Inception v3 sees 299x299 crops of images first resized to 346x346; other encoders
    set their own sizes (e.g. 224 crops of 256 for ResNets, 64 of 74 for small CNNs).
    """

    resize_height: int = 346  # images are resized to this first (aspect ratio not kept)
    resize_width: int = 346
    height: int = 299  # ...then cropped to this: the encoder's input size
    width: int = 299
    # Training only: random crop (else central), then these distortions.
    random_flip: bool = True  # horizontal flip with probability 0.5
    colour_distortion: bool = True  # random brightness, saturation, hue, contrast
    brightness_max_delta: float = 32.0 / 255.0  # added to every pixel, uniform in +-delta
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_max_delta: float = 0.032  # fraction of the hue circle
    contrast_range: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        if self.height > self.resize_height or self.width > self.resize_width:
            raise ValueError(
                f"crop {self.height}x{self.width} is larger than the resized image "
                f"{self.resize_height}x{self.resize_width}"
            )


@dataclass
class InputConfig:
    """Reading records for training and evaluation (im2txt's input settings)."""

    input_file_pattern: str = ""  # comma-separated shard globs, e.g. "train-?????-of-00256"
    batch_size: int = 32  # image-caption pairs per batch
    values_per_input_shard: int = 2300  # approximate records per shard (sizes the buffer)
    input_queue_capacity_factor: int = 2  # shuffle buffer = factor x values_per_input_shard
    num_workers: int = 2  # DataLoader processes decoding and preprocessing images
    seed: int = 0  # shuffling of shards and of the buffer, per epoch

    @property
    def shuffle_buffer(self) -> int:
        return self.values_per_input_shard * self.input_queue_capacity_factor
