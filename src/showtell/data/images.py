"""Decoding image bytes with Pillow, with a reason a person can act on when it fails.

Pillow (with libjpeg-turbo in its wheels) decodes every format here: torchvision's
own decoders are deprecated from 0.29 on, and Pillow also reads CMYK JPEGs, 16-bit
PNGs, BMP and TIFF.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb guard: larger images are refused (Pillow's hard limit).
MAX_IMAGE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970


class BadImageError(ValueError):
    """The bytes are not a decodable image; the message says why."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit greyscale: keep the top byte
        high = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(high, mode="L").convert("RGB")
    return image.convert("RGB")


def load_rgb(
    data: bytes,
    *,
    apply_exif_orientation: bool = False,
    draft: bool = False,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Decodes image bytes to an RGB Pillow image; raises BadImageError with the reason.

    `draft` lets JPEGs decode at 1/8 scale (every byte is still read and checked):
    for validating a file, not for using its pixels.
    """
    if not data:
        raise BadImageError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 Mpx and refuses above twice that; our limit is the latter.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImageError(
                        f"{width}x{height} is over the pixel limit of {max_pixels:,}"
                    )
                if draft and image.format == "JPEG":
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
                if apply_exif_orientation:
                    image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not an image") from None
    except Image.DecompressionBombError:
        raise BadImageError(f"image is over the pixel limit of {MAX_IMAGE_PIXELS:,}") from None
    except (OSError, SyntaxError, ValueError) as e:
        message = str(e)
        reason = "truncated image" if "truncated" in message else f"cannot decode image: {message}"
        raise BadImageError(reason) from None


def verify_image(data: bytes) -> None:
    """Checks that the bytes decode as a whole; raises BadImageError otherwise."""
    load_rgb(data, draft=True)
