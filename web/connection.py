"""One websocket client: authentication and its role, requests, and a bounded outbox drained by its own task.

The engine never waits on a client: everything sent to it goes through :meth:`ClientConnection.send`,
which only enqueues the serialized message. The outbox holds at most ``outbox`` messages and
``outbox_bytes`` bytes; a client that stops reading fills it and is cut off at once: its questions are
cancelled, a close (code 1013) is attempted for ``CUT_OFF_S`` seconds, and then the transport is aborted,
so a client that cannot even take a close frame does not linger.

Every message is checked against the client's role (:mod:`web.auth`): a viewer sees and asks about its
own streams only (others are reported unknown), lists their watches and events and hears their alerts, and
cannot add or remove streams or watches. A stream added at run
time must pass the server's allow-lists (:class:`stream.policy.SourcePolicy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from engine.api import EngineAPI
from engine.engine import Question
from engine.events import FINAL, QuestionEvent, StreamEvent
from engine.recall import AUTO, OFF, RecallRequest
from engine.watches import WatchSpec
from errors import BadRequest, Busy, Forbidden, LivesightError, Unauthorized, UnknownStream
from stream.policy import SourcePolicy
from stream.spec import check_name
from web import protocol
from web.auth import Authenticator, Principal
from web.events_http import event_query
from web.protocol import (
    AddStream,
    Ask,
    Auth,
    Cancel,
    Events,
    ProtocolError,
    RecallWindow,
    RemoveStream,
    Streams,
    Subscribe,
    Unsubscribe,
    Unwatch,
    Watch,
    Watches,
    Wire,
    parse,
)

log = logging.getLogger("livesight.web")

OUTBOX = 4096  # messages; a whole 1024-token answer fits several times
OUTBOX_BYTES = 4 * 1024 * 1024
AUTH_TIMEOUT_S = 10.0
CUT_OFF_S = 1.0  # a polite close of a client that does not read, before the transport is aborted
MAX_ACTIVE_PER_CLIENT = 4
MAX_SUBSCRIPTIONS = 64


class ClientConnection:
    def __init__(
        self,
        ws: ServerConnection,
        engine: EngineAPI,
        auth: Authenticator,
        *,
        policy: SourcePolicy | None = None,
        outbox: int = OUTBOX,
        outbox_bytes: int = OUTBOX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ws = ws
        self.engine = engine
        self.address = str(ws.remote_address[0]) if ws.remote_address else "unknown"
        self.principal: Principal | None = None
        self._auth = auth
        self._policy = policy or SourcePolicy()
        self._clock = clock
        self._limit, self._limit_bytes = outbox, outbox_bytes
        self._outbox: deque[str] = deque()
        self._outbox_bytes = 0
        self._ready = asyncio.Event()  # set when the outbox has something (or the connection is ending)
        self._sent = asyncio.Event()  # set when the outbox is empty
        self._sent.set()
        self._active: dict[str, Question] = {}
        self._subscribed: set[str] = set()
        self._changes: set[asyncio.Task[None]] = set()  # stream additions and removals under way
        self._closing = False
        self._sender: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None  # the cut-off of a client too slow to read

    # --- sending ---------------------------------------------------------------------------------
    def send(self, msg: Wire) -> None:
        """Queue a message for this client (never blocks). A full outbox cuts the client off."""
        if self._closing:
            return
        text = protocol.dumps(msg)
        size = len(text.encode())
        if len(self._outbox) >= self._limit or self._outbox_bytes + size > self._limit_bytes:
            self._cut_off()
            return
        self._outbox.append(text)
        self._outbox_bytes += size
        self._ready.set()
        self._sent.clear()

    def _cut_off(self) -> None:
        log.warning(
            "client %s is not reading (%d messages, %d bytes waiting); disconnecting it",
            self.address,
            len(self._outbox),
            self._outbox_bytes,
        )
        self._closing = True
        self._cancel_all()
        self._outbox.clear()
        self._outbox_bytes = 0
        self._closer = asyncio.get_running_loop().create_task(self._close_or_abort(), name=f"cut-off:{id(self)}")

    async def _close_or_abort(self) -> None:
        if self._sender is not None:
            self._sender.cancel()  # it may be stuck writing to a client that does not read
        try:
            await asyncio.wait_for(self.ws.close(1013, "client too slow"), CUT_OFF_S)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            if self.ws.state.name != "CLOSED":
                self.ws.transport.abort()

    async def _drain(self) -> None:
        while True:
            while not self._outbox:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
            text = self._outbox.popleft()
            self._outbox_bytes -= len(text.encode())
            await self.ws.send(text)
            if not self._outbox:
                self._sent.set()

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until everything queued has been handed to the connection."""
        if self._sender is None or self._sender.done():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._sent.wait()), timeout)

    # --- the connection --------------------------------------------------------------------------
    async def run(self) -> None:
        self._sender = asyncio.create_task(self._drain(), name=f"client-send:{id(self)}")
        try:
            if not await self._authenticate():
                return
            async for raw in self.ws:
                self._handle(raw)
        except ConnectionClosed:
            pass
        finally:
            self._cancel_all()
            for name in self._subscribed:
                self.engine.unsubscribe(name, self._on_status)
            if self._changes:
                # A removal is not cancelled halfway: it would leave a source unclosed. They are short.
                await asyncio.wait(self._changes, timeout=10.0)
            if self.ws.state.name == "OPEN" and not self._closing:
                # Let what is queued (an auth error, say) go out before the connection closes.
                await self.flush(2.0)
            self._closing = True
            self._ready.set()
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)

    async def _authenticate(self) -> bool:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), AUTH_TIMEOUT_S)
        except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            await self._reject(Unauthorized('send {"type":"auth","token":...} first'))
            return False
        try:
            msg = parse(raw)
        except ProtocolError:
            msg = None
        try:
            if not isinstance(msg, Auth):
                self._auth.refuse(self.address, "no auth message")
                raise Unauthorized('the first message must be {"type":"auth","token":...}')
            self.principal = self._auth.authenticate(msg.token, self.address)
        except Unauthorized as exc:
            await self._reject(exc)
            return False
        self.send(protocol.ready([n for n in self.engine.stream_names() if self.principal.sees(n)]))
        return True

    async def _reject(self, err: Unauthorized) -> None:
        await self.ws.send(protocol.dumps(protocol.error(None, err)))
        await self.ws.close(1008, "unauthorized")

    # --- requests --------------------------------------------------------------------------------
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
                self.send(protocol.streams([s for s in self.engine.streams_info() if self._sees(s.name)]))
            elif isinstance(msg, AddStream):
                self._admin("add streams")
                self._start(self._add_stream(msg), f"add-stream:{msg.name}")
            elif isinstance(msg, RemoveStream):
                self._admin("remove streams")
                self._start(self._remove_stream(msg), f"remove-stream:{msg.name}")
            elif isinstance(msg, Subscribe):
                self._visible(msg.stream)
                if msg.stream not in self._subscribed and len(self._subscribed) >= MAX_SUBSCRIPTIONS:
                    raise BadRequest(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
                self.engine.subscribe(msg.stream, self._on_status)
                self._subscribed.add(msg.stream)
            elif isinstance(msg, Unsubscribe):
                self.engine.unsubscribe(msg.stream, self._on_status)
                self._subscribed.discard(msg.stream)
                self.send(protocol.unsubscribed(msg.stream))
            elif isinstance(msg, Watch):
                self._admin("add watches")
                self._visible(msg.stream)
                self._start(self._watch(msg), f"watch:{msg.stream}")
            elif isinstance(msg, Unwatch):
                self._admin("remove watches")
                self._start(self._unwatch(msg), f"unwatch:{msg.watch}")
            elif isinstance(msg, Watches):
                if msg.stream is not None:
                    self._visible(msg.stream)
                streams = [msg.stream] if msg.stream is not None else None
                infos = [w for w in self.engine.watches(streams) if self._sees(w.stream)]
                self.send(protocol.watches(msg.id, infos))
            elif isinstance(msg, Events):
                self._start(self._events(msg), "events")
            elif isinstance(msg, Auth):
                raise BadRequest("already authenticated")
        except LivesightError as exc:
            self._error(getattr(msg, "id", None), exc)

    def _sees(self, stream: str) -> bool:
        return self.principal is not None and self.principal.sees(stream)

    def _visible(self, stream: str) -> None:
        """A stream this client may not see is reported as unknown, like one that does not exist."""
        if not self._sees(stream):
            raise UnknownStream(f"no stream named {stream!r}")

    def _admin(self, what: str) -> None:
        if self.principal is None or not self.principal.admin:
            raise Forbidden(f"only the admin token may {what}")

    def _ask(self, msg: Ask) -> None:
        self._visible(msg.stream)
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
            owner=self,
            group=self.address,
            recall=self._recall(msg.recall),
            detail=msg.detail,
        )
        self._active[msg.id] = q
        try:
            self.engine.submit(q)
        except LivesightError:
            del self._active[msg.id]
            raise

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"{name}:{id(self)}")
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    def _recall(self, asked: str | RecallWindow) -> RecallRequest:
        if asked == "off":
            return OFF
        if not isinstance(asked, RecallWindow):
            return AUTO
        if isinstance(asked.start, str) and isinstance(asked.end, str):
            tz = self.engine.timezone
            start, end = (datetime.fromisoformat(t) for t in (asked.start, asked.end))
            start, end = (t if t.tzinfo else t.replace(tzinfo=tz) for t in (start, end))
            return RecallRequest("window", wall=(start.timestamp(), end.timestamp()))
        return RecallRequest("window", stream_time=(float(asked.start), float(asked.end)))

    async def _add_stream(self, msg: AddStream) -> None:
        try:
            # The name is checked first: parsing would read an invalid one as part of the URL. The policy
            # may resolve a camera's host name, which blocks: off the loop.
            spec = await asyncio.to_thread(self._policy.parse, f"{check_name(msg.name)}={msg.url}")
            self.engine.add_stream(spec)
        except LivesightError as exc:
            self._error(msg.id, exc)
            return
        self.send(protocol.stream_added(msg.id, spec.name, spec.display_url))

    async def _watch(self, msg: Watch) -> None:
        spec = WatchSpec(
            stream=msg.stream,
            condition=msg.condition.strip(),
            every_s=float(msg.every_s),
            min_duration_s=float(msg.min_duration_s),
            cooldown_s=float(msg.cooldown_s),
            threshold=float(msg.threshold),
            describe=msg.describe,
            webhook=msg.webhook,
        )
        try:
            info = await self.engine.add_watch(spec)
        except LivesightError as exc:
            self._error(msg.id, exc)
            return
        self.send(protocol.watching(msg.id, info))

    async def _unwatch(self, msg: Unwatch) -> None:
        try:
            info = await self.engine.remove_watch(msg.watch)
        except LivesightError as exc:
            self._error(msg.id, exc)
            return
        self.send(protocol.unwatched(msg.id, info))

    async def _events(self, msg: Events) -> None:
        try:
            visible = self.principal.streams if self.principal is not None else frozenset()
            query = event_query(msg, visible, self._clock(), self.engine.timezone)
            found = await self.engine.events(query)
        except LivesightError as exc:
            self._error(msg.id, exc)
            return
        self.send(protocol.events(msg.id, found))

    async def _remove_stream(self, msg: RemoveStream) -> None:
        try:
            await self.engine.remove_stream(msg.name)
        except LivesightError as exc:
            self._error(msg.id, exc)
            return
        self.send(protocol.stream_removed(msg.id, msg.name))

    # --- from the engine -------------------------------------------------------------------------
    def _on_question(self, ev: QuestionEvent) -> None:
        """An event of one of our questions; the final one frees its id."""
        if isinstance(ev, FINAL):
            self._active.pop(ev.question, None)
        self.send(protocol.event(ev))

    def _on_status(self, ev: StreamEvent) -> None:
        self.send(protocol.stream_event(ev))

    def _error(self, msg_id: str | None, exc: LivesightError) -> None:
        self.send(protocol.error(msg_id, exc))

    def _cancel_all(self) -> None:
        for q in list(self._active.values()):
            self.engine.cancel(q)
        self._active.clear()
