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

Modules: `app` (the FastAPI app, the micro-batching queue, decoding under a memory
bound, uvicorn's settings), `limits` (`ServeLimits`), `guard` (the HTTP layer: body size
and body deadline, header deadline), `page` (the web page).
"""
