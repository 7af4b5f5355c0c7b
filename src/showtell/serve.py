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

Safety: binds 127.0.0.1 unless told otherwise; the request size, the number of
images per request and each image's decoded pixels are capped (413/422 with a JSON
body naming the problem); no file-system paths are accepted from clients; uvicorn
finishes in-flight requests on shutdown.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse

from showtell import __version__
from showtell.data.images import BadImageError
from showtell.data.preprocess import ImagePreprocessor, decode_rgb
from showtell.generation import Caption
from showtell.inference import Captioner


@dataclass
class ServeLimits:
    max_request_bytes: int = 32 * 2**20  # the whole multipart request
    max_images: int = 16  # images per request
    max_pixels: int = 40_000_000  # decoded pixels per image
    max_batch: int = 32  # images per beam-search batch
    max_wait_ms: float = 10.0  # how long a batch waits to fill


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
            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, future), captions in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(captions)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def create_app(captioner: Captioner, limits: ServeLimits | None = None) -> FastAPI:
    limits = limits or ServeLimits()
    batcher = MicroBatcher(captioner, limits.max_batch, limits.max_wait_ms)
    preprocess = ImagePreprocessor(captioner.image_config, training=False)

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="showtell", version=__version__, lifespan=lifespan)
    app.state.batcher = batcher

    @app.middleware("http")
    async def cap_request_size(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if request.method == "POST" and (length is None or not length.isdigit()):
            # A streamed (chunked) body could be of any size: ask for its length.
            return _error(411, "send a Content-Length header with the request")
        if length is not None and length.isdigit() and int(length) > limits.max_request_bytes:
            return _error(
                413,
                f"request of {int(length):,} bytes is over the limit of "
                f"{limits.max_request_bytes:,} bytes",
            )
        return await call_next(request)

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
        image = decode_rgb(data, apply_exif_orientation=True, max_pixels=limits.max_pixels)
        return preprocess.from_uint8(image)

    async def caption_one(upload: UploadFile) -> dict[str, Any]:
        name = upload.filename or ""
        try:
            image = await run_in_threadpool(prepare, await upload.read())
        except BadImageError as e:
            return {"file": name, "error": str(e)}
        captions = await batcher.caption(image)
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

    @app.post("/v1/captions", response_model=None)
    async def captions(
        images: Annotated[list[UploadFile], File(description="one or more image files")],
    ) -> dict[str, Any] | JSONResponse:
        if len(images) > limits.max_images:
            return _error(
                413, f"{len(images)} images in one request; the limit is {limits.max_images}"
            )
        results = await asyncio.gather(*(caption_one(upload) for upload in images))
        return {"results": list(results)}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app


def serve(captioner: Captioner, host: str, port: int, limits: ServeLimits) -> None:
    import uvicorn

    uvicorn.run(create_app(captioner, limits), host=host, port=port, timeout_graceful_shutdown=30)


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
