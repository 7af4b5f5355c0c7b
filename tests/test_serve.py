"""showtell serve: a real uvicorn server on 127.0.0.1, a tiny model, real HTTP."""

from __future__ import annotations

import asyncio
import io
import math
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from reference_beam import ReferenceCaptioner
from showtell.inference import Captioner

uvicorn = pytest.importorskip("uvicorn")
from showtell.serve.app import create_app, uvicorn_config  # noqa: E402
from showtell.serve.limits import ServeLimits  # noqa: E402


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> bytes:
    image = Image.new("RGB", size, (120, 120, 120))
    image.paste(colour, (8, 8, 24, 24))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[tuple[str, Captioner, object]]:
    captioner = Captioner(tiny_checkpoint, max_caption_length=25)
    limits = ServeLimits(
        max_images=4, max_request_bytes=400_000, max_pixels=50_000, max_batch=16, max_wait_ms=20
    )
    app = create_app(captioner, limits)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn_config(app, "127.0.0.1", port, limits, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", captioner, app
    instance.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> ReferenceCaptioner:
    """The expectation, computed apart from the server's Captioner (tests/reference_beam.py)."""
    return ReferenceCaptioner(tiny_checkpoint, max_caption_length=25)


def _expected(reference: ReferenceCaptioner, data: bytes) -> list[str]:
    return [sentence for sentence, _ in reference.captions(data)]


def _assert_captions(got: list[dict], reference: ReferenceCaptioner, data: bytes) -> None:
    """The server's captions and log-probabilities are the reference's."""
    want = reference.captions(data)
    assert [c["caption"] for c in got] == [sentence for sentence, _ in want]
    for c, (_, logprob) in zip(got, want, strict=True):
        assert c["log_prob"] == pytest.approx(logprob, abs=1e-4)
        assert c["p"] == pytest.approx(math.exp(logprob), rel=1e-4)


def test_endpoints_order_and_errors(server, reference) -> None:
    url, captioner, _ = server
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    info = httpx.get(f"{url}/v1/model").json()
    assert info["encoder"] == "cnn_small" and info["global_step"] == 200
    assert info["beam_size"] == 3 and info["vocab_size"] == len(captioner.vocab)
    assert "/v1/captions" in httpx.get(f"{url}/openapi.json").json()["paths"]
    page = httpx.get(f"{url}/")
    assert (
        page.status_code == 200
        and "Drop images" in page.text
        and "http" not in page.text.split("<script>")[1]
    )

    red, blue = _png((220, 30, 30)), _png((30, 30, 220))
    files = [
        ("images", ("red.png", red)),
        ("images", ("bad.png", b"not an image")),
        ("images", ("blue.png", blue)),
        ("images", ("wide.png", _png((0, 200, 0), (400, 200)))),
    ]
    response = httpx.post(f"{url}/v1/captions", files=files, timeout=60)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["file"] for r in results] == ["red.png", "bad.png", "blue.png", "wide.png"]
    assert results[1] == {"file": "bad.png", "error": "not an image"}
    assert "over the pixel limit of 50,000" in results[3]["error"]
    for result, data in ((results[0], red), (results[2], blue)):
        _assert_captions(result["captions"], reference, data)

    too_many = [("images", (f"{i}.png", red)) for i in range(5)]
    response = httpx.post(f"{url}/v1/captions", files=too_many, timeout=60)
    assert response.status_code == 413 and "at most 4 images" in response.json()["error"]
    big = [("images", ("big.bin", b"x" * 500_000))]
    response = httpx.post(f"{url}/v1/captions", files=big, timeout=60)
    assert (
        response.status_code == 413
        and "over the limit of 400,000 bytes" in response.json()["error"]
    )
    response = httpx.post(f"{url}/v1/captions", data={"x": "y"}, timeout=60)
    assert response.status_code == 422  # no images field

    # A streamed (chunked) body of unstated length is counted as it arrives.
    def streamed(name: str, data: bytes) -> httpx.Response:
        form = httpx.Request("POST", url, files=[("images", (name, data))])
        body = form.read()
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
        response = httpx.post(
            f"{url}/v1/captions",
            content=chunks,
            headers={"content-type": form.headers["content-type"]},
            timeout=60,
        )
        assert "content-length" not in response.request.headers
        return response

    response = streamed("red.png", red)
    _assert_captions(response.json()["results"][0]["captions"], reference, red)
    response = streamed("big.png", b"x" * 500_000)
    assert response.status_code == 413 and response.json() == {
        "error": "request body is over the limit of 400,000 bytes"
    }


def test_fifty_concurrent_requests_are_batched(server, reference) -> None:
    url, _, app = server
    images = [_png((5 * i, 255 - 5 * i, (37 * i) % 256)) for i in range(50)]
    expected = [_expected(reference, data) for data in images]
    assert len({tuple(e) for e in expected}) > 1  # images are told apart (no mix-up unseen)
    batcher = app.state.batcher
    before_batches, before_images = batcher.batches, batcher.images

    async def one(client: httpx.AsyncClient, i: int) -> list[str]:
        response = await client.post(
            f"{url}/v1/captions", files=[("images", (f"{i}.png", images[i]))]
        )
        assert response.status_code == 200
        return [c["caption"] for c in response.json()["results"][0]["captions"]]

    async def run() -> list[list[str]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    assert asyncio.run(run()) == expected
    assert batcher.images - before_images == 50
    assert batcher.batches - before_batches < 50  # requests were captioned together
    assert batcher.largest_batch > 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_web_page_in_headless_chromium(server, reference, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _, _ = server
    image = tmp_path / "red.png"
    image.write_bytes(_png((220, 30, 30)))
    expected = _expected(reference, image.read_bytes())
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.set_input_files("#pick", str(image))
            page.wait_for_selector(".caption", timeout=60_000)
            shown = page.locator(".caption").all_inner_texts()
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert [text.rsplit(" (p=", 1)[0] for text in shown] == expected
    assert (tmp_path / "page.png").stat().st_size > 0
