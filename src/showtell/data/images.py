"""Reading and decoding image files with Pillow, with a reason a person can act on when
it fails.

Pillow (with libjpeg-turbo in its wheels) decodes every format here: torchvision's
own decoders are deprecated from 0.29 on, and Pillow also reads CMYK JPEGs, 16-bit
PNGs, BMP and TIFF.

The pixel limit is one setting for every command that decodes images (build's check,
training, evaluation, run-inference, export): `max_image_pixels()`, which is
`MAX_IMAGE_PIXELS` unless the environment variable SHOWTELL_MAX_PIXELS says otherwise;
build-mscoco-data and run-inference also take `--max_pixels`. The server has its own
limit per request.
"""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from showtell.errors import ShowtellError

# Pillow refuses images over twice its warning threshold (~179 Mpx) when it opens them,
# so no limit above this one can be honoured.
PILLOW_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

# 52 Mpx: every photo of today's 48-50 MP phone and camera sensors (8064x6048 = 48.8 Mpx,
# 8160x6144 = 50.1 Mpx) decodes, while a decompression bomb (a few KB of PNG that
# decode to 169 Mpx cost 3.2 GB in training) is refused before it is decoded. The model
# sees 346x346 pixels, so larger images add cost and nothing else: decoding and
# preprocessing one image at the limit raised peak memory by 0.73 GB (measured, an
# 8000x6500 PNG), the budget of each process that decodes images.
MAX_IMAGE_PIXELS = 52_000_000
MAX_PIXELS_ENV = "SHOWTELL_MAX_PIXELS"


def check_max_pixels(value: int | str, what: str = "--max_pixels") -> int:
    """A pixel limit given by the user, as an int; a ShowtellError if it cannot be one."""
    try:
        pixels = int(value)
    except ValueError:
        raise ShowtellError(f"{what} must be a whole number of pixels, got {value!r}") from None
    if not 1 <= pixels <= PILLOW_MAX_PIXELS:
        raise ShowtellError(
            f"{what} must be between 1 and {PILLOW_MAX_PIXELS:,} (Pillow's limit), got {pixels:,}"
        )
    return pixels


def max_image_pixels() -> int:
    """The pixel limit of every command that decodes images: SHOWTELL_MAX_PIXELS if set
    (read at each call, so that it reaches data-loading worker processes too), else
    MAX_IMAGE_PIXELS."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    return check_max_pixels(value, MAX_PIXELS_ENV) if value else MAX_IMAGE_PIXELS


class BadImageError(ValueError):
    """The file, or its bytes, cannot be used as an image; the message says why."""


def printable(text: str) -> str:
    """`text` with its non-printable characters (newlines, escapes, undecodable bytes of a
    file name) written as Python escapes, so a message about a file stays one line and
    cannot drive the terminal; every other character is left as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def read_image_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file; BadImageError with the reason for anything else.

    A FIFO, device or socket is refused without being read (reading a FIFO waits for a
    writer forever): the file is opened without blocking and checked by its descriptor,
    so a name swapped for something else between a check and the open cannot slip by.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    except IsADirectoryError:
        raise BadImageError("is a directory") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise BadImageError(f"cannot read file: {getattr(e, 'strerror', None) or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadImageError("is a directory")
        if not stat.S_ISREG(mode):
            raise BadImageError(f"not a regular file (a {_file_kind(mode)})")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise BadImageError(f"cannot read file: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


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
    max_pixels: int | None = None,
) -> Image.Image:
    """Decodes image bytes to an RGB Pillow image; raises BadImageError with the reason.

    An image over `max_pixels` (default `max_image_pixels()`) is refused from its header,
    before any pixel is decoded. `draft` lets JPEGs decode at 1/8 scale (every byte is
    still read and checked): for validating a file, not for using its pixels.
    """
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if not data:
        raise BadImageError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 Mpx and refuses above twice that; our limit is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > limit:
                    raise BadImageError(f"{width}x{height} is over the pixel limit of {limit:,}")
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
        raise BadImageError(f"image is over the pixel limit of {limit:,}") from None
    except (OSError, SyntaxError, ValueError) as e:
        message = str(e)
        reason = "truncated image" if "truncated" in message else f"cannot decode image: {message}"
        raise BadImageError(reason) from None


def verify_image(data: bytes, max_pixels: int | None = None) -> None:
    """Checks that the bytes decode as a whole; raises BadImageError otherwise."""
    load_rgb(data, draft=True, max_pixels=max_pixels)
