"""What one client can make `showtell serve` hold (the README's serve section gives the
worst case these imply): `ServeLimits`, with serve's other settings in
`showtell.config.commands`, where each is a flag."""

from __future__ import annotations

from showtell.config.commands import ServeLimits

__all__ = ["ServeLimits"]
