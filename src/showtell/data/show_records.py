"""`showtell show-records`: what is inside a set of shards, record by record."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, TextIO

from PIL import Image, UnidentifiedImageError

from showtell.data.images import printable
from showtell.data.records import expand_file_patterns, read_caption_records


def describe_records(pattern: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """One dict per record: file, image id, image bytes, decoded size, tokens, ids."""
    count = 0
    for path in expand_file_patterns(pattern):
        for record in read_caption_records(path):
            if limit is not None and count >= limit:
                return
            try:
                with Image.open(io.BytesIO(record.image_data)) as image:
                    width, height, fmt = image.width, image.height, image.format
            except (UnidentifiedImageError, OSError):
                width = height = fmt = None
            yield {
                "file": str(path),
                "image_id": record.image_id,
                "image_bytes": len(record.image_data),
                "image_format": fmt,
                "width": width,
                "height": height,
                "caption": list(record.caption),
                "caption_ids": list(record.caption_ids),
            }
            count += 1


def print_records(pattern: str, limit: int | None, as_json: bool, out: TextIO) -> int:
    """Prints records as text or JSON lines; returns how many were printed."""
    count = 0
    for info in describe_records(pattern, limit):
        if as_json:
            out.write(json.dumps(info) + "\n")
        else:
            size = (
                f"{info['width']}x{info['height']} {info['image_format']}"
                if info["width"]
                else "NOT A DECODABLE IMAGE"
            )
            out.write(  # the file name and tokens escaped: one record, three lines
                f"image {info['image_id']}: {info['image_bytes']:,} bytes, {size}  "
                f"[{printable(info['file'])}]\n"
                f"  caption:     {printable(' '.join(info['caption']))}\n"
                f"  caption_ids: {' '.join(map(str, info['caption_ids']))}\n"
            )
        count += 1
    return count
