"""`showtell serve`'s application: the FastAPI app, the queue that captions requests' images
together, decoding under a memory bound, and uvicorn's settings (see the package's
docstring)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
from concurrent.futures import ThreadPoolExecutor
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
from showtell.serve.guard import (
    MAX_HEADER_BYTES,
    RequestGuard,
    error_response,
    header_timeout_protocol,
)
from showtell.serve.limits import ServeLimits
from showtell.serve.page import PAGE

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
            return error_response(
                422, 'send the images as multipart/form-data, in the field "images"'
            )
        parser = MultiPartParser(
            request.headers, request.stream(), max_files=limits.max_images, max_fields=0
        )
        try:
            form = await parser.parse()
        except MultiPartException as e:
            return error_response(
                413,
                f"{e.message} Send at most {limits.max_images} images, in the field "
                '"images", and nothing else.',
            )
        except Exception as e:  # malformed multipart, or the client went away
            return error_response(400, f"cannot read the multipart form: {e}")
        images = [u for u in form.getlist("images") if isinstance(u, UploadFile)]
        if not images:
            await form.close()
            return error_response(422, 'no images: send them in the multipart field "images"')
        return images

    @app.post("/v1/captions", response_model=None, openapi_extra=UPLOAD_SCHEMA)
    async def captions(request: Request) -> dict[str, Any] | JSONResponse:
        images = await read_form(request)
        if isinstance(images, JSONResponse):
            return images
        try:
            pixels = sum(await run_in_threadpool(lambda: [declared_pixels(u) for u in images]))
            if pixels > limits.max_request_pixels:
                return error_response(
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
