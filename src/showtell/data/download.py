"""The seed's download_and_preprocess_mscoco: fetch MSCOCO 2014, unpack, build records.

Downloads resume: a partial file `NAME.part` is continued with an HTTP Range request
after a broken connection or a restart, and only a file whose size matches what the
server declared (and, for the official files, their known size) is renamed into place.
"""

from __future__ import annotations

import http.client
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from showtell.data.build import BuildConfig, build_mscoco
from showtell.errors import ShowtellError

COCO_BASE_URL = "http://images.cocodataset.org"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the base URL
    size: int | None  # bytes, when known

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# MSCOCO 2014, as served by cocodataset.org (sizes in bytes: 13.5 GB, 6.6 GB, 253 MB).
COCO_2014_FILES = (
    RemoteFile("zips/train2014.zip", 13_510_573_713),
    RemoteFile("zips/val2014.zip", 6_645_013_297),
    RemoteFile("annotations/annotations_trainval2014.zip", 252_872_794),
)


class DownloadError(ShowtellError):
    pass


class _Incomplete(Exception):
    pass


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range")  # bytes START-END/TOTAL
    if response.status == 206 and content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + offset if length and length.isdigit() else None


def download(
    url: str,
    destination: Path,
    expected_size: int | None = None,
    *,
    attempts: int = 10,
    backoff_seconds: float = 2.0,
    timeout: float = 60.0,
    chunk_bytes: int = 1 << 20,
) -> Path:
    """Downloads `url` to `destination`, resuming a partial download, with retries."""
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    last_error = "no attempt made"
    for attempt in range(1, attempts + 1):
        offset = partial.stat().st_size if partial.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if offset and response.status != 206:
                    offset = 0  # the server ignored the range: start again
                total = _total_size(response, offset)
                if expected_size is not None and total is not None and total != expected_size:
                    raise DownloadError(
                        f"{url}: server reports {total:,} bytes, expected {expected_size:,}"
                    )
                total = total if total is not None else expected_size
                with (
                    open(partial, "ab" if offset else "wb") as out,
                    tqdm(
                        total=total,
                        initial=offset,
                        desc=destination.name,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        file=sys.stderr,
                    ) as bar,
                ):
                    while chunk := response.read(chunk_bytes):
                        out.write(chunk)
                        bar.update(len(chunk))
            size = partial.stat().st_size
            if total is not None and size != total:
                raise _Incomplete(f"got {size:,} of {total:,} bytes")
            partial.replace(destination)
            return destination
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # our partial file is not a prefix: start over
                partial.unlink()
                last_error = "server refused the resume range"
                continue
            if 400 <= e.code < 500:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            last_error = f"HTTP {e.code} {e.reason}"
        except (
            TimeoutError,
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            _Incomplete,
        ) as e:
            last_error = str(getattr(e, "reason", e)) or type(e).__name__
        if attempt < attempts:
            tqdm.write(
                f"{destination.name}: {last_error}; resuming (attempt {attempt + 1} of {attempts})",
                file=sys.stderr,
            )
            time.sleep(min(backoff_seconds * 2 ** (attempt - 1), 60.0))
    raise DownloadError(f"{url}: download failed after {attempts} attempts: {last_error}")


def unzip(archive: Path, directory: Path) -> None:
    """Extracts `archive` into `directory` once (a marker file records completion)."""
    marker = directory / f".{archive.name}.unpacked"
    if marker.is_file():
        return
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = sum(m.file_size for m in members)
            with tqdm(
                total=total,
                desc=f"unpacking {archive.name}",
                unit="B",
                unit_scale=True,
                file=sys.stderr,
            ) as bar:
                for member in members:
                    zf.extract(member, directory)  # zipfile strips '..' and absolute paths
                    bar.update(member.file_size)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{archive}: not a valid zip file ({e}); delete it and retry") from e
    marker.touch()


def download_and_preprocess_mscoco(
    output_dir: Path, config: BuildConfig, base_url: str = COCO_BASE_URL, **download_options: Any
) -> dict[str, Any]:
    """Downloads MSCOCO 2014 into output_dir/raw-data, unpacks it and builds the records
    into output_dir, as the seed's script did."""
    raw = output_dir / "raw-data"
    official = base_url.rstrip("/") == COCO_BASE_URL
    for remote in COCO_2014_FILES:
        archive = download(
            f"{base_url.rstrip('/')}/{remote.path}",
            raw / remote.name,
            remote.size if official else None,
            **download_options,
        )
        unzip(archive, raw)
    return build_mscoco(
        raw / "annotations" / "captions_train2014.json",
        raw / "train2014",
        raw / "annotations" / "captions_val2014.json",
        raw / "val2014",
        config,
    )
