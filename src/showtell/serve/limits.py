"""What one client can make `showtell serve` hold (the README's serve section gives the
worst case these imply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeLimits:
    """What one client can make the server hold; each is a `showtell serve` flag."""

    max_request_bytes: int = 32 * 2**20  # the whole body, counted as it is read
    max_images: int = 16  # images per request
    max_pixels: int = 40_000_000  # decoded pixels per image
    max_request_pixels: int = 200_000_000  # decoded pixels of all images of a request
    exact_pixels: int = 16_000_000  # larger images are box-reduced to at most this
    decode_workers: int = 2  # images read and decoded at a time, server-wide
    max_pending: int = 64  # decoded images waiting for the model, server-wide
    max_batch: int = 32  # images per beam-search batch
    max_wait_ms: float = 10.0  # how long a batch waits to fill
    header_timeout_s: float = 10.0  # from connection (or last response) to full headers
    body_timeout_s: float = 60.0  # from the headers to the end of the body
    max_connections: int = 256  # open connections; more are answered 503
