"""One websocket client: authentication, requests, and a bounded outbox drained by its own task.

The engine never waits on a client: everything it sends goes through :meth:`ClientConnection.send`,
which only enqueues. A client that stops reading fills its outbox and is disconnected (close code 1013)
without slowing anyone else down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from engine.engine import Engine, Question
from engine.events import FINAL, QuestionEvent, StreamStatus
from errors import BadRequest, Busy, LivesightError, Unauthorized
from stream.spec import check_name, parse_source
from web import protocol
from web.protocol import (
    AddStream,
    Ask,
    Auth,
    Cancel,
    ProtocolError,
    RemoveStream,
    Streams,
    Subscribe,
    Unsubscribe,
    Wire,
    parse,
)

log = logging.getLogger("livesight.web")

OUTBOX = 4096  # messages; a whole 1024-token answer fits several times
AUTH_TIMEOUT_S = 10.0
MAX_ACTIVE_PER_CLIENT = 4
MAX_SUBSCRIPTIONS = 64


class ClientConnection:
    def __init__(
        self,
        ws: ServerConnection,
        engine: Engine,
        token: str,
        *,
        outbox: int = OUTBOX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ws = ws
        self.engine = engine
        self._token = token
        self._clock = clock
        self._outbox: asyncio.Queue[Wire | None] = asyncio.Queue(maxsize=outbox)
        self._active: dict[str, Question] = {}
        self._subscribed: set[str] = set()
        self._removals: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closer: asyncio.Task[None] | None = None  # the close of a client too slow to read

    def send(self, msg: Wire) -> None:
        """Queue a message for this client (never blocks). A full outbox disconnects the client."""
        if self._closing:
            return
        try:
            self._outbox.put_nowait(msg)
        except asyncio.QueueFull:
            log.warning("client %s is not reading; disconnecting it", self.ws.remote_address)
            self._closing = True
            self._cancel_all()
            self._closer = asyncio.get_running_loop().create_task(
                self.ws.close(1013, "client too slow"), name=f"close-slow:{id(self)}"
            )

    def _on_question(self, ev: QuestionEvent) -> None:
        """An event of one of our questions; the final one frees its id."""
        if isinstance(ev, FINAL):
            self._active.pop(ev.question, None)
        self.send(protocol.event(ev))

    def _on_status(self, ev: StreamStatus) -> None:
        self.send(protocol.status(ev))

    async def _drain(self) -> None:
        while True:
            msg = await self._outbox.get()
            if msg is None:
                return
            await self.ws.send(protocol.dumps(msg))

    async def run(self) -> None:
        sender = asyncio.create_task(self._drain(), name=f"client-send:{id(self)}")
        try:
            if not await self._authenticate():
                return
            async for raw in self.ws:
                self._handle(raw)
        except ConnectionClosed:
            pass
        finally:
            self._closing = True
            self._cancel_all()
            for name in self._subscribed:
                self.engine.unsubscribe(name, self._on_status)
            if self._removals:
                # A removal is not cancelled halfway: it would leave a source unclosed. They are short.
                await asyncio.wait(self._removals, timeout=10.0)
            if self.ws.state.name == "OPEN" and not sender.done():
                # Let what is queued (an auth error, say) go out before the connection closes.
                with contextlib.suppress(asyncio.QueueFull):
                    self._outbox.put_nowait(None)
                await asyncio.wait({sender}, timeout=2.0)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)

    async def _authenticate(self) -> bool:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), AUTH_TIMEOUT_S)
        except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            await self._reject('send {"type":"auth","token":...} first')
            return False
        try:
            msg = parse(raw)
        except ProtocolError:
            msg = None
        if not isinstance(msg, Auth):
            await self._reject('the first message must be {"type":"auth","token":...}')
            return False
        if not hmac.compare_digest(msg.token.encode(), self._token.encode()):
            await self._reject("wrong token")
            return False
        self.send(protocol.ready(self.engine.stream_names()))
        return True

    async def _reject(self, why: str) -> None:
        await self.ws.send(protocol.dumps(protocol.error(None, Unauthorized(why))))
        await self.ws.close(1008, "unauthorized")

    def _handle(self, raw: str | bytes) -> None:
        try:
            msg = parse(raw)
        except ProtocolError as exc:
            self._error(exc.msg_id, exc.error)
            return
        try:
            if isinstance(msg, Ask):
                self._ask(msg)
            elif isinstance(msg, Cancel):
                q = self._active.get(msg.id)
                if q is None:
                    raise BadRequest(f"no active question with id {msg.id!r}")
                self.engine.cancel(q)
            elif isinstance(msg, Streams):
                self.send(protocol.streams(self.engine.streams_info()))
            elif isinstance(msg, AddStream):
                self._add_stream(msg)
            elif isinstance(msg, RemoveStream):
                task = asyncio.get_running_loop().create_task(
                    self._remove_stream(msg), name=f"remove-stream:{msg.name}:{id(self)}"
                )
                self._removals.add(task)
                task.add_done_callback(self._removals.discard)
            elif isinstance(msg, Subscribe):
                if msg.stream not in self._subscribed and len(self._subscribed) >= MAX_SUBSCRIPTIONS:
                    raise BadRequest(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
                self.engine.subscribe(msg.stream, self._on_status)
                self._subscribed.add(msg.stream)
            elif isinstance(msg, Unsubscribe):
                self.engine.unsubscribe(msg.stream, self._on_status)
                self._subscribed.discard(msg.stream)
                self.send(protocol.unsubscribed(msg.stream))
            elif isinstance(msg, Auth):
                raise BadRequest("already authenticated")
        except LivesightError as exc:
            self._error(getattr(msg, "id", None), exc)

    def _ask(self, msg: Ask) -> None:
        if msg.id in self._active:
            raise BadRequest(f"question id {msg.id!r} is already in use on this connection")
        if len(self._active) >= MAX_ACTIVE_PER_CLIENT:
            raise Busy(f"at most {MAX_ACTIVE_PER_CLIENT} questions at a time per connection")
        q = Question(
            id=msg.id,
            stream=msg.stream,
            text=msg.question,
            max_new_tokens=msg.max_new_tokens,
            session=msg.session,
            guided=msg.guided,
            reply=self._on_question,
            received=self._clock(),
        )
        self.engine.submit(q)
        self._active[msg.id] = q

    def _add_stream(self, msg: AddStream) -> None:
        # The name is checked first: parse_source would read an invalid one as part of the URL.
        spec = parse_source(f"{check_name(msg.name)}={msg.url}")
        self.engine.add_stream(spec)
        self.send(protocol.stream_added(msg.id, spec.name, spec.display_url))

    async def _remove_stream(self, msg: RemoveStream) -> None:
        try:
            await self.engine.remove_stream(msg.name)
        except LivesightError as exc:
            self._error(msg.id, exc)
            return
        self.send(protocol.stream_removed(msg.id, msg.name))

    def _error(self, msg_id: str | None, exc: LivesightError) -> None:
        self.send(protocol.error(msg_id, exc))

    def _cancel_all(self) -> None:
        for q in list(self._active.values()):
            self.engine.cancel(q)
        self._active.clear()
