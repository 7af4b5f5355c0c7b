"""The HTTP layer of `showtell serve`: a request's body counted and timed as it is read,
and a deadline on the headers, below FastAPI (pure ASGI and uvicorn's h11 protocol)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from showtell.serve.limits import ServeLimits


def error_response(status: int, message: str) -> JSONResponse:
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
    response = error_response(status, message)
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
