"""download-and-preprocess-mscoco against a local HTTP server that supports Range
requests and breaks the first connection for one file half-way."""

from __future__ import annotations

import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import make_coco_layout
from showtell.cli import main
from showtell.data.download import DownloadError, download


class _Server:
    def __init__(self, files: dict[str, bytes], break_first: set[str]) -> None:
        self.files = files
        self.break_first = set(break_first)
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = int(range_header[6:-1]) if range_header else 0
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206 if range_header else 200)
                if range_header:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path.lstrip("/") in server.break_first:
                    server.break_first.discard(self.path.lstrip("/"))
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.close_connection = True  # the connection drops mid-file
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory() -> Iterator:
    servers: list[_Server] = []

    def start(files: dict[str, bytes], break_first: set[str] = frozenset()) -> _Server:
        servers.append(_Server(files, break_first))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _zip(folder: Path, root: Path, destination: Path) -> bytes:
    with zipfile.ZipFile(destination, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(root))
    return destination.read_bytes()


def test_download_and_preprocess_resumes_a_broken_download(
    tmp_path: Path, server_factory, capsys
) -> None:
    source = tmp_path / "source"
    paths = make_coco_layout(source, num_train=5, num_val=20)
    files = {
        "zips/train2014.zip": _zip(paths["train_image_dir"], source, tmp_path / "t.zip"),
        "zips/val2014.zip": _zip(paths["val_image_dir"], source, tmp_path / "v.zip"),
        "annotations/annotations_trainval2014.zip": _zip(
            source / "annotations", source, tmp_path / "a.zip"
        ),
    }
    server = server_factory(files, break_first={"zips/val2014.zip"})
    out = tmp_path / "mscoco"
    code = main(
        [
            "download-and-preprocess-mscoco",
            str(out),
            f"--base_url={server.url}",
            "--retry_seconds=0.01",
            "--train_shards=2",
            "--val_shards=1",
            "--test_shards=1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err

    # The broken file was resumed from where the connection dropped, not restarted.
    val_requests = [r for p, r in server.requests if p == "/zips/val2014.zip"]
    half = len(files["zips/val2014.zip"]) // 2
    assert val_requests == [None, f"bytes={half}-"]
    assert "resuming (attempt 2 of 10)" in captured.err
    for name, body in files.items():
        assert (out / "raw-data" / Path(name).name).read_bytes() == body
    assert not list((out / "raw-data").glob("*.part"))

    # Then unpacked and built, as the seed's script: train 5 + 17, val 1, test 2 images.
    info = json.loads((out / "dataset.json").read_text())
    assert {k: v["images"] for k, v in info["splits"].items()} == {
        "train": 22,
        "val": 1,
        "test": 2,
    }
    assert (out / "word_counts.txt").is_file()
    assert "Finished processing all 4 image-caption pairs in data set 'test'." in captured.out

    # A second run downloads nothing again.
    before = len(server.requests)
    assert (
        main(
            [
                "download-and-preprocess-mscoco",
                str(out),
                f"--base_url={server.url}",
                "--train_shards=2",
                "--val_shards=1",
                "--test_shards=1",
            ]
        )
        == 0
    )
    assert len(server.requests) == before


def test_download_errors_are_one_line(tmp_path: Path, server_factory) -> None:
    server = server_factory({"a.bin": b"x" * 1000})
    with pytest.raises(DownloadError, match=r"/missing.bin: HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "missing.bin")
    with pytest.raises(DownloadError, match=r"server reports 1,000 bytes, expected 999"):
        download(f"{server.url}/a.bin", tmp_path / "a.bin", expected_size=999)
    # A stale partial file longer than the remote one is discarded, then downloaded.
    (tmp_path / "b.bin.part").write_bytes(b"y" * 2000)
    server.files["b.bin"] = b"z" * 10
    assert (
        download(f"{server.url}/b.bin", tmp_path / "b.bin", backoff_seconds=0).read_bytes()
        == b"z" * 10
    )
