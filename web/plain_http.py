"""Plain HTTP requests other than GET (WHIP's POST and DELETE) on the websocket server's one port.

websockets parses only what a websocket handshake can be: a GET without a body. :class:`PlainHttpConnection`
(passed to ``serve(create_connection=...)``, websockets' documented extension point) looks at the first
bytes of a connection: a GET goes to websockets as before (the websocket API, ``/healthz``, the page);
any other method is read here as one HTTP/1.1 request, with bounded headers and body and a deadline,
answered by an async handler, and the connection is closed after the response (no keep-alive).

A response is either one buffered body or a stream of byte chunks (server-sent events), sent as they come
with the chunked transfer coding (HTTP/1.0 clients: delimited by the close). A client that leaves stops
the stream at once: it is closed (``aclose``), which is how its producer learns to stop; a handler that
waits can watch :attr:`HttpRequest.gone` for the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

log = logging.getLogger("livesight.web")

MAX_HEAD_BYTES = 16 * 1024  # request line and headers
MAX_BODY_BYTES = 64 * 1024  # an SDP offer is 2-10 KB
READ_TIMEOUT_S = 5.0  # for the whole request to arrive
FLUSH_TIMEOUT_S = 5.0  # for the response to leave before the connection is dropped
STALL_TIMEOUT_S = 30.0  # a streamed response's client that takes nothing for this long is dropped
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str  # path and query, as sent
    headers: Headers
    body: bytes
    peer: str | None = None  # the client's address
    version: str = "HTTP/1.1"
    #: done when the client's connection is gone (a handler that waits long can stop early)
    gone: asyncio.Future[None] | None = field(default=None, compare=False)


class BodyStream(Protocol):
    """A streamed response body: byte chunks, and ``aclose`` (always called once the response ends,
    whether the stream was read to its end, cut short by the client leaving, or never started)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: HTTPStatus
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: a streamed body, sent chunk by chunk as it comes (``body`` is then ignored)
    stream: BodyStream | None = None

    def head(self, *, chunked: bool = False) -> bytes:
        """The status line and headers; a streamed response has no length: chunked, or ended by the close."""
        lines = [f"HTTP/1.1 {self.status.value} {self.status.phrase}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if self.stream is None:
            lines.append(f"Content-Length: {len(self.body)}")
        elif chunked:
            lines.append("Transfer-Encoding: chunked")
        lines += ["Connection: close", "Cache-Control: no-store", "Server: livesight", "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def encode(self) -> bytes:
        """The whole response, for one that is not streamed."""
        return self.head() + self.body


class HttpError(Exception):
    """A request answered with an error status and a short JSON body ``{"error": message}``."""

    def __init__(self, status: HTTPStatus, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []

    def response(self) -> HttpResponse:
        body = json.dumps({"error": self.message}).encode()
        return HttpResponse(self.status, body, [("Content-Type", "application/json"), *self.headers])


class ClientGone(Exception):
    """Raised by a handler whose client left (:attr:`HttpRequest.gone`): there is nobody to answer."""


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
#: Shapes the response to an :class:`HttpError` for the request's path (None: not read that far).
ErrorShaper = Callable[[HttpError, "str | None"], HttpResponse]


def connection_class(handler: HttpHandler, errors: ErrorShaper | None = None) -> type[ServerConnection]:
    """A :class:`ServerConnection` class that answers non-GET requests with ``handler``; errors are
    ``{"error": message}`` unless ``errors`` shapes them."""

    class _Connection(PlainHttpConnection):
        async def handle_http(self, request: HttpRequest) -> HttpResponse:
            return await handler(request)

        def error_response(self, error: HttpError, target: str | None) -> HttpResponse:
            return errors(error, target) if errors is not None else error.response()

    return _Connection


class PlainHttpConnection(ServerConnection):
    """Subclasses implement :meth:`handle_http` (see :func:`connection_class`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first = bytearray()  # bytes held until the method is known
        self._kind: asyncio.Future[str] = self.loop.create_future()  # "websocket" | "http"
        self._buf = bytearray()
        self._arrived = asyncio.Event()
        self._eof = False
        self._target: str | None = None  # the request's target, once its head is read
        self._chunked = False  # a streamed response is sent chunked (the client speaks HTTP/1.1)

    # --- routing the bytes -----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._kind.done():
            self._first += data
            if len(self._first) < 4 and b"GET "[: len(self._first)] == self._first:
                return  # could still be a GET: wait for more
            first, self._first = bytes(self._first), bytearray()
            if first.startswith(b"GET "):
                self._kind.set_result("websocket")
                super().data_received(first)
            else:
                self._kind.set_result("http")
                self._take(first)
        elif self._kind.result() == "websocket":
            super().data_received(data)
        else:
            self._take(data)

    def _take(self, data: bytes) -> None:
        # Keep at most one byte past the limits: enough to know the request is too large.
        room = MAX_HEAD_BYTES + MAX_BODY_BYTES + 1 - len(self._buf)
        if room > 0:
            self._buf += data[:room]
        self._arrived.set()

    def eof_received(self) -> None:
        if self._kind.done() and self._kind.result() == "http":
            # The transport closes itself after this: a client that half-closes gets no answer, as
            # websockets does for its own requests.
            self._eof = True
            self._arrived.set()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._arrived.set()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        waiters: list[asyncio.Future[Any]] = [self._kind, self.connection_lost_waiter]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not self._kind.done() or self._kind.result() == "websocket":
            await super().handshake(*args, **kwargs)
            return
        try:
            try:
                request = await asyncio.wait_for(self._read_request(), READ_TIMEOUT_S)
            except TimeoutError:
                raise HttpError(
                    HTTPStatus.REQUEST_TIMEOUT, f"request not received within {READ_TIMEOUT_S:g} s"
                ) from None
            except ConnectionError:
                return  # the client left mid-request: nobody to answer
            response = await self.handle_http(request)
        except ClientGone:
            return
        except HttpError as exc:
            response = self.error_response(exc, self._target)
        except Exception:
            log.exception("HTTP request handler failed")
            internal = HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server log")
            response = self.error_response(internal, self._target)
        await self._respond(response)

    async def handle_http(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    def error_response(self, error: HttpError, target: str | None) -> HttpResponse:
        return error.response()

    # --- one request, one response ---------------------------------------------------------------
    async def _read_request(self) -> HttpRequest:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEAD_BYTES:
                raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"headers over {MAX_HEAD_BYTES} bytes")
            await self._more()
        if end > MAX_HEAD_BYTES:
            raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"headers over {MAX_HEAD_BYTES} bytes")
        method, target, version, headers = _parse_head(bytes(self._buf[:end]))
        self._target = target
        self._chunked = version == "HTTP/1.1"
        if "Transfer-Encoding" in headers:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        length = _content_length(headers)
        if length > MAX_BODY_BYTES:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes; the limit is {MAX_BODY_BYTES}"
            )
        start = end + 4
        while len(self._buf) < start + length:
            await self._more()
        peer = self.remote_address[0] if self.remote_address else None
        body = bytes(self._buf[start : start + length])
        return HttpRequest(method, target, headers, body, peer, version, asyncio.shield(self.connection_lost_waiter))

    async def _more(self) -> None:
        if self._eof or self.connection_lost_waiter.done():
            raise ConnectionError("the client closed the connection mid-request")
        self._arrived.clear()
        await self._arrived.wait()  # set by new data, EOF and connection_lost

    async def _respond(self, response: HttpResponse) -> None:
        try:
            if self.connection_lost_waiter.done():
                return
            if response.stream is None:
                self.transport.write(response.encode())
            else:
                self.transport.write(response.head(chunked=self._chunked))
                await self._stream(response.stream, self._chunked)
        finally:
            if response.stream is not None:
                await response.stream.aclose()
        self.transport.close()  # flushes, then closes
        try:
            await asyncio.wait_for(asyncio.shield(self.connection_lost_waiter), FLUSH_TIMEOUT_S)
        except TimeoutError:
            self.transport.abort()

    async def _stream(self, body: BodyStream, chunked: bool) -> None:
        """Send ``body``'s chunks as they come, until it ends or the client leaves."""
        chunks = aiter(body)
        lost = self.connection_lost_waiter
        while True:
            step: asyncio.Future[bytes] = asyncio.ensure_future(anext(chunks))
            waiting: list[asyncio.Future[Any]] = [step, lost]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():  # the client left: stop the producer where it waits
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
                return
            try:
                chunk = step.result()
            except StopAsyncIteration:
                break
            except Exception:  # a producer's bug: the response ends unfinished (no last chunk)
                log.exception("a streamed HTTP response failed")
                return
            if chunk:
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                try:  # a client that reads slowly holds the producer back; one that stops is dropped
                    await asyncio.wait_for(self.drain(), STALL_TIMEOUT_S)
                except (asyncio.TimeoutError, ConnectionError):
                    self.transport.abort()
                    return
            if lost.done():
                return
        if chunked:
            self.transport.write(b"0\r\n\r\n")


def _parse_head(head: bytes) -> tuple[str, str, str, Headers]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP request line")
    if not parts[1].startswith(b"/"):
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request target must be a path")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP header line")
        try:
            headers[name.decode("ascii")] = value.strip().decode("latin-1")
        except UnicodeDecodeError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP header line") from None
    return parts[0].decode("ascii"), parts[1].decode("latin-1"), parts[2].decode("ascii"), headers


def _content_length(headers: Headers) -> int:
    values = headers.get_all("Content-Length")
    if not values:
        return 0
    if len(set(values)) != 1 or not values[0].isdigit() or len(values[0]) > 12:
        raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
    return int(values[0])
