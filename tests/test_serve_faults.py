"""`showtell serve` under hostile and unlucky clients (issue 16).

A real server process (the CLI, on 127.0.0.1) with small limits, so that the bounds
are quick to reach, and raw sockets, so that the requests are exactly the hostile
ones: a body whose headers lie about its size, a request of pixel bombs, clients that
stall. The memory bound asserted is the README's formula with the limits used here.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from showtell.data.preprocess import ImagePreprocessor
from showtell.inference import Captioner

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

# One server process for the module (a few seconds to start), and timeouts to wait out.
pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 2**20
MAX_PIXELS = 4_000_000
MAX_REQUEST_PIXELS = 40_000_000
EXACT_PIXELS = 1_000_000
DECODE_WORKERS = 2
HEADER_TIMEOUT = 1.5
MAX_CONNECTIONS = 60
BODY_TIMEOUT = 2.0
# The README's worst case for decoding: per decode, max(14 B x max_pixels, 15 B x
# exact_pixels) plus the file's bytes; at most `decode_workers` decodes at a time.
DECODE_BOUND = DECODE_WORKERS * (max(14 * MAX_PIXELS, 15 * EXACT_PIXELS) + MAX_REQUEST_BYTES)


class Server:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process, self.port = process, port

    def status(self, key: str) -> int:
        """A /proc/PID/status value in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def request(self, raw: bytes) -> bytes:
        with self.connect() as sock:
            sock.sendall(raw)
            return read_until_closed(sock)


def read_until_closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()


def multipart(files: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(files: list[tuple[str, bytes]]) -> bytes:
    body, content_type = multipart(files)
    head = (
        f"POST /v1/captions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def json_body(response: bytes) -> dict:
    import json

    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def bomb_png(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG (the most expensive mode to decode) of zeros: a few KB."""
    row = b"\x00" * (1 + 2 * width)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "showtell",
        "serve",
        f"--checkpoint_path={tiny_checkpoint}",
        f"--port={port}",
        "--device=cpu",
        "--max_request_mb=1",
        f"--max_pixels={MAX_PIXELS}",
        f"--max_request_pixels={MAX_REQUEST_PIXELS}",
        f"--exact_pixels={EXACT_PIXELS}",
        f"--decode_workers={DECODE_WORKERS}",
        f"--header_timeout={HEADER_TIMEOUT}",
        f"--body_timeout={BODY_TIMEOUT}",
        "--max_batch=16",
        f"--max_connections={MAX_CONNECTIONS}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    instance = Server(process, port)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the server did not start"
        try:
            response = instance.request(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            if status_line(response).endswith("200 OK"):
                break
        except OSError:
            time.sleep(0.2)
    yield instance
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def test_ambiguous_or_oversized_headers_are_refused(server: Server) -> None:
    response = server.request(
        b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n"
    )
    assert status_line(response) == "HTTP/1.1 400 Bad Request"
    assert b"not both" in response
    response = server.request(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n"
    )
    assert status_line(response) == "HTTP/1.1 431 Request Header Fields Too Large"
    with server.connect() as sock:  # the same headers in pieces: h11's own limit
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # closed: answered
            for _ in range(20):
                sock.sendall(b"y" * 1000)
                time.sleep(0.01)
        assert status_line(read_until_closed(sock)) == "HTTP/1.1 400 Bad Request"


def test_body_over_the_cap_is_refused_on_the_bytes_read(server: Server) -> None:
    declared = server.request(
        b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n"
    )
    assert status_line(declared) == "HTTP/1.1 413 Request Entity Too Large"

    rss_before = server.status("VmRSS")
    attempted = 64 * 2**20  # 64 times the cap, in chunks, as the failing request sent it
    chunk = b"%x\r\n" % 2**16 + b"x" * 2**16 + b"\r\n"
    sent = 0
    with server.connect() as sock:
        sock.sendall(
            b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        part = (
            b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        try:
            while sent < attempted:
                sock.sendall(chunk)
                sent += 2**16
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: it has answered
        response = read_until_closed(sock)
    assert sent < attempted  # the server stopped reading
    assert status_line(response) == "HTTP/1.1 413 Request Entity Too Large"
    assert json_body(response) == {"error": "request body is over the limit of 1,048,576 bytes"}
    assert server.status("VmRSS") - rss_before < 16 * 2**20


def test_form_parts_over_the_limits_are_refused(server: Server) -> None:
    """Parts are held in memory up to 64 KiB each: their number is capped as they arrive."""
    png = _png(Image.new("RGB", (8, 8)))
    response = server.request(post([(f"{i}.png", png) for i in range(17)]))
    assert status_line(response) == "HTTP/1.1 413 Request Entity Too Large"
    assert "at most 16 images" in json_body(response)["error"]
    body = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + b"x" * 1000
    body += b"\r\n--b--\r\n"
    response = server.request(
        b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=b\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert status_line(response) == "HTTP/1.1 413 Request Entity Too Large"


def _clear_peak(server: Server) -> int:
    """Resets the server's VmHWM to its current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")
    return server.status("VmRSS")


def test_pixel_bombs_are_decoded_within_the_memory_bound(server: Server) -> None:
    bomb = bomb_png(2000, 2000)  # 4 Mpx, each at the per-image limit
    assert len(bomb) < 20_000

    over_budget = server.request(post([(f"{i}.png", bomb) for i in range(11)]))  # 44 Mpx
    assert status_line(over_budget) == "HTTP/1.1 413 Request Entity Too Large"
    assert "the limit is 40,000,000 per request" in json_body(over_budget)["error"]

    warm_up = server.request(post([(f"{i}.png", bomb_png(300, 300)) for i in range(4)]))
    assert status_line(warm_up) == "HTTP/1.1 200 OK"  # the decoding threads exist now
    rss_before = _clear_peak(server)
    response = server.request(post([(f"{i}.png", bomb) for i in range(10)]))  # 40 Mpx
    peak = server.status("VmHWM")
    assert status_line(response) == "HTTP/1.1 200 OK"
    results = json_body(response)["results"]
    assert [r["file"] for r in results] == [f"{i}.png" for i in range(10)]
    assert all(len(r["captions"]) == 3 for r in results)
    # All ten decoded at once would take 10 x 14 B x 4 Mpx = 560 MB over the baseline.
    slack = 48 * 2**20  # allocator and interpreter noise
    assert peak - rss_before < DECODE_BOUND + slack, (peak - rss_before) / 2**20
    assert server.status("VmRSS") - rss_before < 64 * 2**20  # and it was given back


def _stripes(width: int, height: int) -> Image.Image:
    """One-pixel stripes: bilinear resizing from the full image and from a box-reduced
    one give very different inputs, so the test can tell which one the server used."""
    columns = Image.new("RGB", (width, 1))
    columns.putdata([(230, 40, 40) if x % 2 else (30, 30, 220) for x in range(width)])
    return columns.resize((width, height), Image.Resampling.NEAREST)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_large_images_are_reduced_and_normal_ones_are_exact(
    server: Server, tiny_checkpoint: Path
) -> None:
    large = _stripes(1603, 1201)  # 1.93 Mpx: reduced by 2 to 801x600
    normal = _stripes(801, 600)  # under exact_pixels: preprocessed as run-inference does
    response = server.request(post([("large.png", _png(large)), ("normal.png", _png(normal))]))
    results = json_body(response)["results"]

    captioner = Captioner(tiny_checkpoint, max_caption_length=25)
    preprocess = ImagePreprocessor(captioner.image_config, training=False)

    def expected(image: Image.Image) -> list[tuple[str, float]]:
        captions = captioner.caption_images(preprocess(_png(image)).unsqueeze(0))[0]
        return [(captioner.sentence(c), c.logprob) for c in captions]

    def served(result: dict) -> list[tuple[str, float]]:
        return [(c["caption"], c["log_prob"]) for c in result["captions"]]

    def same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
        return [s for s, _ in a] == [s for s, _ in b] and all(
            abs(x - y) < 1e-5 for (_, x), (_, y) in zip(a, b, strict=True)
        )

    assert same(served(results[1]), expected(normal))
    assert same(served(results[0]), expected(large.reduce(2)))
    assert not same(expected(large), expected(large.reduce(2)))  # the test can tell


def test_slow_clients_are_closed_and_their_descriptors_freed(server: Server) -> None:
    baseline = server.open_fds()
    partial_headers, stalled_bodies, drips = [], [], []
    for _ in range(20):
        sock = server.connect()
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        partial_headers.append(sock)
    for _ in range(20):
        sock = server.connect()
        sock.sendall(
            b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        stalled_bodies.append(sock)
    for _ in range(3):  # headers a byte at a time: activity does not extend the deadline
        drips.append(server.connect())
    deadline = time.monotonic() + 10
    while server.open_fds() < baseline + 40 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server accepts them as it gets to them
    assert server.open_fds() >= baseline + 40

    start = time.monotonic()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"y" * 100
    for i in range(int(3 * HEADER_TIMEOUT / 0.25)):  # bounded: 3 timeouts' worth of drips
        for sock in drips:
            with contextlib.suppress(OSError):
                sock.send(request[i : i + 1])
        time.sleep(0.25)
    for sock in [*partial_headers, *drips]:
        assert read_until_closed(sock, timeout=10) == b""  # closed without a response
    for sock in stalled_bodies:
        response = read_until_closed(sock, timeout=10)
        assert status_line(response) == "HTTP/1.1 408 Request Timeout"
    waited = time.monotonic() - start
    assert waited < 3 * HEADER_TIMEOUT + BODY_TIMEOUT + 5
    for sock in [*partial_headers, *stalled_bodies, *drips]:
        sock.close()

    deadline = time.monotonic() + 10
    while server.open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.open_fds() <= baseline


def test_connections_over_the_limit_get_503(server: Server) -> None:
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    baseline = server.open_fds()
    idle = [server.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 10
        while server.open_fds() < baseline + MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.05)  # the server accepts them as it gets to them
        assert status_line(server.request(healthz)) == "HTTP/1.1 503 Service Unavailable"
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while status_line(server.request(healthz)) != "HTTP/1.1 200 OK":
        assert time.monotonic() < deadline, "the server did not recover"
        time.sleep(0.1)
