"""One authenticated websocket connection: requests out in order, every server message routed to whoever
waits for it.

Replies that carry an ``id`` (a question's tokens and answer, ``stream_added``, ``stream_removed``, an error
naming the request) go to the request with that id. The protocol's id-less requests (``streams``,
``subscribe``) are answered by the server in the order it received them, so they wait in one queue, in the
order they were sent: a ``streams`` reply, an error without an id and the first ``status`` of a stream just
subscribed each settle the oldest. Every other ``status`` is a push, handed to ``on_status``; the watch
pushes (``watch_status``, ``alert``, ``alert_update``) go to ``on_push``.

One reader task routes; one writer task sends. Both end with the connection; everything still waiting then
fails with the reason (``on_close`` is told it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Close

from livesight.client.errors import (
    ClientError,
    ConnectionFailed,
    Disconnected,
    InvalidReply,
    ServerError,
    TooLargeError,
)
from web.protocol import MAX_MESSAGE_BYTES, Auth, Message, request
from web.server_messages import Alert, AlertUpdate, Error, Ready, ServerMessage, Status, StreamList, WatchStatus, parse

log = logging.getLogger("livesight.client")

#: Largest server message accepted (a ``streams`` reply of many streams stays far below).
MAX_SIZE = 4 * 1024 * 1024
#: Requests waiting to be written; more means the connection is stuck, and a request fails at once.
MAX_UNSENT = 1024

R = TypeVar("R", bound=ServerMessage)


class Waiter(Protocol):
    """What waits for the replies to one request with an id."""

    def deliver(self, msg: ServerMessage) -> bool:
        """Take a message carrying this request's id; True when it was the last one."""
        ...

    def fail(self, error: ClientError) -> None: ...


class Reply(Generic[R]):
    """A request with one reply of type ``R`` (an ``error`` with its id fails it)."""

    def __init__(self, kind: type[R]) -> None:
        self.kind = kind
        self.future: asyncio.Future[R] = asyncio.get_running_loop().create_future()

    def deliver(self, msg: ServerMessage) -> bool:
        if isinstance(msg, Error):
            self.fail(ServerError.from_wire(msg))
        elif isinstance(msg, self.kind):
            if not self.future.done():
                self.future.set_result(msg)
        else:
            self.fail(InvalidReply(f"expected {self.kind.__name__}, got {msg.type!r}"))
        return True

    def fail(self, error: ClientError) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class Unnamed:
    """An id-less request: ``streams``, or ``subscribe`` to ``stream``."""

    kind: type[StreamList | Status]
    stream: str | None = None
    future: asyncio.Future[StreamList | Status] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, msg: StreamList | Status | Error) -> None:
        if self.future.done():
            return
        if isinstance(msg, Error):
            self.future.set_exception(ServerError.from_wire(msg))
        else:
            self.future.set_result(msg)

    def fail(self, error: ClientError) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Link:
    """An open, authenticated connection. Make one with :meth:`open`."""

    def __init__(
        self,
        ws: ClientConnection,
        ready: Ready,
        on_status: Callable[[Status], None],
        on_close: Callable[[Link, ClientError], None],
        on_push: Callable[[WatchStatus | Alert | AlertUpdate], None] | None = None,
    ) -> None:
        self.ready = ready
        self._ws = ws
        self._on_status = on_status
        self._on_push = on_push
        self._on_close = on_close
        self._by_id: dict[str, Waiter] = {}
        self._unnamed: deque[Unnamed] = deque()
        self._unsent: deque[str] = deque()
        self._wake = asyncio.Event()
        self.closed: ClientError | None = None  # why, once closed
        self._reader = asyncio.create_task(self._read(), name=f"livesight-client-read:{id(self)}")
        self._writer = asyncio.create_task(self._write(), name=f"livesight-client-write:{id(self)}")

    @classmethod
    async def open(
        cls,
        url: str,
        token: str,
        *,
        timeout: float,
        on_status: Callable[[Status], None],
        on_close: Callable[[Link, ClientError], None],
        on_push: Callable[[WatchStatus | Alert | AlertUpdate], None] | None = None,
    ) -> Link:
        """Connect and authenticate; raises :class:`ConnectionFailed`, or the server's error (a wrong token
        is :class:`UnauthorizedError`)."""
        try:
            ws = await connect(url, open_timeout=timeout, max_size=MAX_SIZE, compression=None)
        except InvalidURI as exc:
            raise ConnectionFailed(f"not a websocket URL: {exc}", retryable=False) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode(errors="replace")[:200] if exc.response.body else ""
            raise ConnectionFailed(
                f"{url} refused the websocket: HTTP {status} {body}".rstrip(), retryable=status >= 500 or status == 429
            ) from None
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            raise ConnectionFailed(f"cannot reach {url}: {exc or type(exc).__name__}") from None
        try:
            await ws.send(request(Auth(token=token)))
            msg = parse(await asyncio.wait_for(ws.recv(), timeout))
        except ConnectionClosed as exc:
            raise Disconnected(f"{url} closed the connection before it was ready ({_why(exc.rcvd)})") from None
        except asyncio.TimeoutError:
            await ws.close()
            raise ConnectionFailed(f"{url} did not answer the authentication within {timeout} s") from None
        except ValueError as exc:
            await ws.close()
            raise InvalidReply(f"{url} answered the authentication with {exc}") from None
        if isinstance(msg, Error):
            await ws.close()
            raise ServerError.from_wire(msg)
        if not isinstance(msg, Ready):
            await ws.close()
            raise InvalidReply(f"{url} answered the authentication with {msg!r}")
        return cls(ws, msg, on_status, on_close, on_push)

    # --- requests ----------------------------------------------------------------------------------
    def send(self, msg: Message, waiter: Waiter | None = None, rid: str | None = None) -> None:
        """Queue ``msg``; ``waiter`` gets the replies carrying ``rid``. Raises at once, never waits."""
        text = self._text(msg)
        if waiter is not None and rid is not None:
            self._by_id[rid] = waiter
        self._queue(text)

    def send_unnamed(self, msg: Message, waiter: Unnamed) -> None:
        """Queue an id-less request whose reply settles ``waiter``."""
        text = self._text(msg)
        self._unnamed.append(waiter)
        self._queue(text)

    def waiting(self, rid: str) -> bool:
        return rid in self._by_id

    def _text(self, msg: Message) -> str:
        if self.closed is not None:
            raise self.closed
        if len(self._unsent) >= MAX_UNSENT:
            raise Disconnected(f"{MAX_UNSENT} requests are waiting to be sent: the connection is stuck")
        text = request(msg)
        size = len(text.encode())
        if size > MAX_MESSAGE_BYTES:
            raise TooLargeError(f"a {msg.type} message of {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
        return text

    def _queue(self, text: str) -> None:
        self._unsent.append(text)
        self._wake.set()

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                while not self._unsent:
                    self._wake.clear()
                    await self._wake.wait()
                await self._ws.send(self._unsent.popleft())

    # --- replies -----------------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                self._route(raw)
        except ConnectionClosed:
            pass
        finally:
            self._closed(Disconnected(f"the connection closed ({_why(self._ws.protocol.close_rcvd)})"))

    def _route(self, raw: str | bytes) -> None:
        try:
            msg = parse(raw)
        except ValueError as exc:  # pydantic's ValidationError is one
            log.warning("ignoring a server message that is not valid: %s", exc)
            rid = _id_of(raw)
            if rid is not None and rid in self._by_id:
                self._by_id.pop(rid).fail(InvalidReply(f"the server's reply is not valid: {exc}"))
            return
        if msg is None:
            return  # a message type this client does not know
        if isinstance(msg, Status):
            head = self._unnamed[0] if self._unnamed else None
            if head is not None and head.kind is Status and head.stream == msg.stream and not msg.removed:
                self._unnamed.popleft().settle(msg)
            self._on_status(msg)
        elif isinstance(msg, (WatchStatus, Alert, AlertUpdate)):
            if self._on_push is not None:
                self._on_push(msg)
        elif isinstance(msg, StreamList) or (isinstance(msg, Error) and msg.id is None):
            if not self._unnamed:
                log.warning("ignoring an unrequested %s message: %s", msg.type, msg)
                return
            head = self._unnamed.popleft()
            if isinstance(msg, StreamList) and head.kind is not StreamList:
                head.fail(InvalidReply(f"expected the status of {head.stream!r}, got a streams list"))
            else:
                head.settle(msg)
        else:
            rid = getattr(msg, "id", None)
            if not isinstance(rid, str) or rid not in self._by_id:
                return  # unsolicited (a reply to a request that already ended: a cancel that came late)
            if self._by_id[rid].deliver(msg):
                del self._by_id[rid]

    # --- the end -----------------------------------------------------------------------------------
    async def close(self, why: ClientError) -> None:
        """Close the connection; what still waits fails with ``why``."""
        self._closed(why)
        await self._ws.close()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)

    def _closed(self, why: ClientError) -> None:
        if self.closed is not None:
            return
        self.closed = why
        self._writer.cancel()
        for waiter in self._by_id.values():
            waiter.fail(why)
        self._by_id.clear()
        for unnamed in self._unnamed:
            unnamed.fail(why)
        self._unnamed.clear()
        self._on_close(self, why)


def _why(frame: Close | None) -> str:
    if frame is None:
        return "no close frame"
    return f"code {frame.code}{': ' + frame.reason if frame.reason else ''}"


def _id_of(raw: str | bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) else None
