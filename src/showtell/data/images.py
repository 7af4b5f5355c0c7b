"""Checking that image bytes decode, with a reason a person can act on when not."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

# Decompression-bomb guard: larger images are refused (PIL's own limit is ~89 Mpx and
# only warns below twice that; we make it an error).
MAX_IMAGE_PIXELS = 178_956_970


class BadImageError(ValueError):
    """The bytes are not a decodable image; the message says why."""


def verify_image(data: bytes) -> tuple[int, int]:
    """Decodes the whole image (JPEGs at reduced DCT scale, which still reads every
    byte) and returns its (width, height); raises BadImageError otherwise."""
    if not data:
        raise BadImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
                if size[0] * size[1] > MAX_IMAGE_PIXELS:
                    raise BadImageError(
                        f"{size[0]}x{size[1]} pixels is over the limit of {MAX_IMAGE_PIXELS}"
                    )
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
    except UnidentifiedImageError:
        raise BadImageError("not an image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImageError(str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, BadImageError):
            raise
        message = str(e)
        reason = "truncated image" if "truncated" in message else f"cannot decode image: {message}"
        raise BadImageError(reason) from None
    return size
