"""`showtell serve`: captions over HTTP, with a web page, for a trained checkpoint.

    POST /v1/captions   one or more images (multipart field "images") -> for each
                        image, in the order sent, the beam's captions with log-probs
                        and p, or the reason it failed (a bad image fails alone)
    GET  /healthz       liveness
    GET  /v1/model      vocabulary size, encoder, checkpoint step, beam settings
    GET  /              a page to drop or pick images and see their captions
    GET  /docs          the OpenAPI schema, browsable

Requests that arrive together are captioned together: every image goes into one
queue, and a single worker takes up to `max_batch` images at a time (waiting at most
`max_wait_ms` for more) and runs the batched beam search on them.

Memory is bounded by design, not by the clients' goodwill (`ServeLimits`, and the
README's serve section for the worst case they imply):
- a request's body is counted on the bytes actually read, whatever its headers say
  (Content-Length together with Transfer-Encoding is a 400, as HTTP/1.1 requires);
  uploads are spooled to disk past 64 KiB per file;
- a request's images may hold at most `max_request_pixels` (their headers are read
  before anything is decoded), each at most `max_pixels`;
- at most `decode_workers` images are read and decoded at a time, server-wide, and at
  most `max_pending` decoded images wait for the model; an image over `exact_pixels`
  is box-reduced by an integer factor right after decoding (images up to it are
  preprocessed exactly as `run-inference` does), and large decodes are handed back to
  the operating system (`malloc_trim`);
- headers must arrive within `header_timeout_s` and the body within `body_timeout_s`
  (slow clients are closed), and at most `max_connections` are served at a time (503).
Safety otherwise: binds 127.0.0.1 unless told otherwise; no file-system paths are
accepted from clients; uvicorn finishes in-flight requests on shutdown.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from showtell import __version__
from showtell.data.images import BadImageError, load_rgb
from showtell.data.preprocess import ImagePreprocessor
from showtell.generation import Caption
from showtell.inference import Captioner

# An uploaded file is held in memory up to this size, then spooled to a temporary file
# (Starlette's default is 1 MiB per file, i.e. up to 16 MiB per connection).
UPLOAD_SPOOL_BYTES = 64 * 2**10
MultiPartParser.spool_max_size = UPLOAD_SPOOL_BYTES

UPLOAD_SCHEMA = {  # the form is parsed by hand (under limits): its schema for /docs
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files",
                        }
                    },
                }
            }
        },
    }
}


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


class MicroBatcher:
    """One queue of preprocessed images; one worker captions them in batches."""

    def __init__(self, captioner: Captioner, max_batch: int, max_wait_ms: float) -> None:
        self.captioner, self.max_batch, self.max_wait = captioner, max_batch, max_wait_ms / 1e3
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)  # one model, one batch at a time
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def caption(self, image: torch.Tensor) -> list[Caption]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            images = torch.stack([image for image, _ in batch])
            try:
                results = await loop.run_in_executor(
                    self.executor, self.captioner.caption_images, images
                )
            except Exception as e:  # the model failed: every waiting request hears of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            finally:
                del images
            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, future), captions in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(captions)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


# --- the HTTP layer: body size, body deadline, header deadline ----------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestGuard:
    """Pure ASGI middleware: the body is counted and timed as it is read.

    A client's headers are not trusted: a Content-Length over the limit is refused at
    once, but the cap is enforced on the bytes that arrive (chunked bodies included),
    and the whole body must arrive within `body_timeout_s` of the headers. A refusal
    closes the connection (`Connection: close`); the application then sees the client
    as gone, and whatever it tries to send is dropped.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limits: ServeLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_request_bytes
        lengths = [v for k, v in scope["headers"] if k.lower() == b"content-length"]
        chunked = any(k.lower() == b"transfer-encoding" for k, _ in scope["headers"])
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            # h11 refuses longer headers (400) only when they arrive in pieces.
            await _refuse(send, 431, f"request headers over {MAX_HEADER_BYTES:,} bytes")
            return
        if lengths and chunked:
            await _refuse(send, 400, "send Content-Length or Transfer-Encoding, not both")
            return
        if lengths and lengths[0].isdigit() and int(lengths[0]) > limit:
            await _refuse(send, 413, _too_large(limit, int(lengths[0])))
            return

        deadline = time.monotonic() + self.limits.body_timeout_s
        received = 0
        refused = False
        body_done = not chunked and (not lengths or lengths[0] == b"0")

        async def guarded_receive() -> Message:
            nonlocal received, refused, body_done
            if refused:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                refused = True
                await _refuse(
                    send, 408, f"the request body took over {self.limits.body_timeout_s:g} s"
                )
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    refused = True
                    await _refuse(send, 413, _too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if refused:
                return
            if message["type"] == "http.response.start" and not body_done:
                # Answered before the body was read (an error): close rather than let
                # the server read and discard whatever the client still sends.
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


_CLOSE = (b"connection", b"close")
MAX_HEADER_BYTES = 16 * 2**10  # h11's limit on headers arriving in pieces, applied to all


def _too_large(limit: int, declared: int | None = None) -> str:
    size = f"request of {declared:,} bytes" if declared is not None else "request body"
    return f"{size} is over the limit of {limit:,} bytes"


async def _refuse(send: Send, status: int, message: str) -> None:
    response = _error(status, message)
    response.headers["connection"] = "close"
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing connections whose headers take over `timeout_s`.

    uvicorn times out idle keep-alive connections (and restarts that clock on every
    byte) but not a request's headers: a client sending half a request line, or one
    byte every few seconds, would hold its connection for ever. Here a clock starts
    when the connection opens and again after each response; when it runs out and no
    request is in the application's hands, the connection is closed. Requests in the
    application's hands are timed by `RequestGuard`.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(timeout_s, self._header_timer_expired)

        def _header_timer_expired(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


# --- decoding under a memory bound ---------------------------------------------------------

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)  # glibc only
TRIM_AFTER_PIXELS = 2_000_000  # decodes this large give their memory back at once


def release_freed_memory() -> None:
    """Returns freed heap memory to the operating system (glibc keeps it otherwise).

    Pillow allocates decoded images in 16 MiB blocks, below glibc's mmap threshold
    once it has grown, so they land in the decoding thread's malloc arena and stay
    resident after being freed.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def declared_pixels(upload: UploadFile) -> int:
    """The pixels an uploaded image says it has (its header only; 0 if unreadable)."""
    try:
        with Image.open(upload.file) as image:
            width, height = image.size
        return width * height
    except Exception:  # not an image: it fails alone when it is decoded
        return 0
    finally:
        upload.file.seek(0)


def reduction_factor(width: int, height: int, exact_pixels: int, min_size: tuple[int, int]) -> int:
    """The integer factor that brings an image to at most `exact_pixels` (1: as it is).

    The reduced image stays at least `min_size` (height, width), the model's resize
    size, so that it is never upsampled where the full one would not have been.
    """
    if width * height <= exact_pixels:
        return 1
    factor = math.ceil(math.sqrt(width * height / exact_pixels))
    return max(1, min(factor, height // min_size[0], width // min_size[1]))


def create_app(captioner: Captioner, limits: ServeLimits | None = None) -> FastAPI:
    limits = limits or ServeLimits()
    batcher = MicroBatcher(captioner, limits.max_batch, limits.max_wait_ms)
    preprocess = ImagePreprocessor(captioner.image_config, training=False)
    resize_size = (captioner.image_config.resize_height, captioner.image_config.resize_width)
    decoder = ThreadPoolExecutor(max_workers=limits.decode_workers, thread_name_prefix="decode")
    decode_slots = asyncio.Semaphore(limits.decode_workers)  # bytes are read only in a slot
    pending_slots = asyncio.Semaphore(limits.max_pending)

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        batcher.start()
        yield
        await batcher.stop()
        decoder.shutdown(wait=True)

    app = FastAPI(title="showtell", version=__version__, lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(RequestGuard, limits=limits)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        config = captioner.checkpoint.model_config
        return {
            "vocab_size": config.vocab_size,
            "encoder": config.encoder,
            "checkpoint": captioner.checkpoint.path.name,
            "global_step": captioner.checkpoint.step,
            "image_size": [config.image.height, config.image.width],
            "beam_size": captioner.beam_size,
            "max_caption_length": captioner.max_caption_length,
            "length_normalization_factor": captioner.length_normalization_factor,
        }

    def prepare(data: bytes) -> torch.Tensor:
        """Bytes -> the model's input; the decoded image lives only inside this call."""
        image = load_rgb(data, apply_exif_orientation=True, max_pixels=limits.max_pixels)
        pixels = image.width * image.height
        factor = reduction_factor(image.width, image.height, limits.exact_pixels, resize_size)
        if factor > 1:
            image = image.reduce(factor)
        array = np.array(image)  # (H, W, 3) uint8, as decode_rgb gives
        del image
        x = preprocess.from_uint8(torch.from_numpy(array).permute(2, 0, 1))
        del array
        if pixels >= TRIM_AFTER_PIXELS:
            release_freed_memory()
        return x

    async def caption_one(upload: UploadFile) -> dict[str, Any]:
        name = upload.filename or ""
        async with pending_slots:
            async with decode_slots:
                data = await upload.read()
                try:
                    image = await asyncio.get_running_loop().run_in_executor(decoder, prepare, data)
                except BadImageError as e:
                    return {"file": name, "error": str(e)}
                finally:
                    del data
            captions = await batcher.caption(image)
            del image
        return {
            "file": name,
            "captions": [
                {
                    "caption": captioner.sentence(c),
                    "log_prob": c.logprob,
                    "p": math.exp(c.logprob),
                }
                for c in captions
            ],
        }

    async def read_form(request: Request) -> list[UploadFile] | JSONResponse:
        """The request's images, parsed under the limits (at most `max_images` files,
        each spooled to disk past 64 KiB, and no text fields, which are held in memory)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(422, 'send the images as multipart/form-data, in the field "images"')
        parser = MultiPartParser(
            request.headers, request.stream(), max_files=limits.max_images, max_fields=0
        )
        try:
            form = await parser.parse()
        except MultiPartException as e:
            return _error(
                413,
                f"{e.message} Send at most {limits.max_images} images, in the field "
                '"images", and nothing else.',
            )
        except Exception as e:  # malformed multipart, or the client went away
            return _error(400, f"cannot read the multipart form: {e}")
        images = [u for u in form.getlist("images") if isinstance(u, UploadFile)]
        if not images:
            await form.close()
            return _error(422, 'no images: send them in the multipart field "images"')
        return images

    @app.post("/v1/captions", response_model=None, openapi_extra=UPLOAD_SCHEMA)
    async def captions(request: Request) -> dict[str, Any] | JSONResponse:
        images = await read_form(request)
        if isinstance(images, JSONResponse):
            return images
        try:
            pixels = sum(await run_in_threadpool(lambda: [declared_pixels(u) for u in images]))
            if pixels > limits.max_request_pixels:
                return _error(
                    413,
                    f"the request's images hold {pixels:,} pixels; "
                    f"the limit is {limits.max_request_pixels:,} per request",
                )
            results = await asyncio.gather(*(caption_one(upload) for upload in images))
            return {"results": list(results)}
        finally:
            for upload in images:
                await upload.close()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app


def uvicorn_config(app: FastAPI, host: str, port: int, limits: ServeLimits, **kwargs: Any):  # type: ignore[no-untyped-def]
    """uvicorn's settings for `app` under `limits` (the tests serve with these too)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_timeout_protocol(limits.header_timeout_s),
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=5,  # an idle connection between requests (uvicorn's default)
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,  # request line + headers
        timeout_graceful_shutdown=30,
        **kwargs,
    )


def serve(captioner: Captioner, host: str, port: int, limits: ServeLimits) -> None:
    import uvicorn

    uvicorn.Server(uvicorn_config(create_app(captioner, limits), host, port, limits)).run()


PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>showtell</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}
 #drop{border:2px dashed #888;border-radius:8px;padding:2em;text-align:center;cursor:pointer}
 #drop.over{background:#eef}
 .result{display:flex;gap:1em;margin:1em 0;align-items:flex-start}
 .result img{width:160px;image-rendering:pixelated;border:1px solid #ccc}
 .error{color:#b00}
</style>
<h1>showtell</h1>
<p>Drop images here, or pick them: each gets the model's captions.</p>
<div id="drop">Drop images or click to choose
 <input id="pick" type="file" accept="image/*" multiple hidden></div>
<div id="results"></div>
<script>
const drop = document.getElementById("drop"), pick = document.getElementById("pick");
const out = document.getElementById("results");
drop.onclick = () => pick.click();
pick.onchange = () => send(pick.files);
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => {
  e.preventDefault(); drop.classList.remove("over"); send(e.dataTransfer.files);
};
async function send(files) {
  const form = new FormData();
  for (const f of files) form.append("images", f);
  const response = await fetch("/v1/captions", {method: "POST", body: form});
  const body = await response.json();
  if (!response.ok) { out.insertAdjacentHTML("afterbegin", `<p class=error></p>`);
    out.firstChild.textContent = body.error || response.statusText; return; }
  body.results.forEach((r, i) => {
    const div = document.createElement("div"); div.className = "result";
    const img = document.createElement("img"); img.src = URL.createObjectURL(files[i]);
    const text = document.createElement("div");
    const title = document.createElement("b"); title.textContent = r.file; text.append(title);
    if (r.error) { const p = document.createElement("p"); p.className = "error";
      p.textContent = r.error; text.append(p); }
    else { const ol = document.createElement("ol"); ol.start = 0;
      for (const c of r.captions) { const li = document.createElement("li");
        li.className = "caption"; li.textContent = `${c.caption} (p=${c.p.toFixed(6)})`;
        ol.append(li); } text.append(ol); }
    div.append(img, text); out.prepend(div);
  });
}
</script>
</html>
"""
