"""The asynchronous client: the whole websocket protocol as typed calls, on one connection that comes back
by itself when it drops."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from livesight.client.errors import (
    BadRequestError,
    ClientClosed,
    ClientError,
    Disconnected,
    UnknownStreamError,
)
from livesight.client.link import Link, Reply, Unnamed
from livesight.client.question import Question
from livesight.client.subscription import StreamPush, Subscription
from stream.backoff import Backoff
from web.protocol import (
    AddStream,
    Ask,
    Cancel,
    Events,
    Message,
    RecallWindow,
    RemoveStream,
    Streams,
    Subscribe,
    Unsubscribe,
    Unwatch,
    Watch,
    Watches,
)
from web.server_messages import (
    Alert,
    AlertUpdate,
    EventList,
    Ready,
    ServerMessage,
    Status,
    StreamAdded,
    StreamInfo,
    StreamList,
    StreamRemoved,
    TimelineEvent,
    Unwatched,
    WatchInfo,
    Watching,
    WatchList,
    WatchStatus,
)

log = logging.getLogger("livesight.client")

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=ServerMessage)
T = TypeVar("T", bound=StreamPush)

#: Told when the connection drops (``False`` and why) and when it is back (``True``, None).
ConnectionListener = Callable[[bool, ClientError | None], None]


class Client:
    """A livesight server over its websocket API::

        async with Client("ws://127.0.0.1:8765/v1/ws", token) as client:
            answer = await client.ask("demo", "What do you see?")

    Many questions may be in flight at once on the one connection (the server allows 4 per connection).
    Requests fail fast with a typed :class:`ClientError`; ``retryable`` says whether the same request can
    succeed later. When the connection drops, what was waiting fails with :class:`Disconnected`
    (retryable) and, unless ``reconnect`` is False, the client reconnects in the background with capped
    exponential backoff and subscribes its subscriptions again; requests made before it is back fail with
    :class:`Disconnected` too. A token the server refuses on reconnection ends the subscriptions with
    that error. The first connection is not retried: :meth:`open` raises.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        on_connection: ConnectionListener | None = None,
    ) -> None:
        self.url = url
        self._token = token
        self._reconnect = reconnect
        self._backoff = backoff or Backoff(base=0.25, cap=5.0)
        self._timeout = open_timeout
        self._on_connection = on_connection
        self._link: Link | None = None
        self._ready: Ready | None = None
        self._ids = itertools.count(1)
        self._subscribers: dict[str, list[Subscription[Any]]] = {}  # stream -> its subscriptions
        self._last: dict[str, Status] = {}  # the latest status of every stream subscribed to
        self._confirming: dict[str, Unnamed] = {}  # subscribes sent, their first status not yet in
        self._reconnecting: asyncio.Task[None] | None = None
        self._ended: ClientError | None = None  # closed, or refused for good

    @classmethod
    async def connect(cls, url: str, token: str, **options: Any) -> Client:
        """A connected client (``options`` as for the constructor)."""
        client = cls(url, token, **options)
        await client.open()
        return client

    async def open(self) -> None:
        """Connect and authenticate; raises :class:`ConnectionFailed` or the server's error."""
        if self._link is None:
            self._link = await self._open_link()

    async def close(self) -> None:
        """Close the connection: questions in flight fail with :class:`ClientClosed`, subscriptions end."""
        if self._ended is None:
            self._ended = ClientClosed("the client was closed")
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        link, self._link = self._link, None
        if link is not None:
            await link.close(self._ended)
        for subs in list(self._subscribers.values()):
            for sub in subs:
                sub._end()
        self._subscribers.clear()

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def ready(self) -> Ready:
        """The server's ``ready`` message of the latest connection: the streams this token may see."""
        if self._ready is None:
            raise Disconnected("not connected yet")
        return self._ready

    # --- questions ---------------------------------------------------------------------------------
    def ask(
        self,
        stream: str,
        question: str,
        *,
        max_new_tokens: int = 128,
        session: str | None = None,
        guided: Literal["uniform", "attention"] | None = None,
        recall: Literal["auto", "off"] | tuple[str, str] | tuple[float, float] = "auto",
        detail: bool = False,
    ) -> Question:
        """Ask about ``stream``; the question is sent at once. Iterate the :class:`Question` for the
        answer's pieces, await it for the :class:`Answer`. ``session`` names a conversation: its earlier
        turns on that stream become part of the context. ``recall`` chooses archived clips: ``"auto"``
        (the question's time words or content), ``"off"``, or a window (two ISO 8601 times for a live
        stream, two stream seconds for a file); ``detail`` shows the newest frame at high resolution."""
        link = self._current()
        qid = self._next_id("q")
        msg = _build(
            Ask,
            id=qid,
            stream=stream,
            question=question,
            max_new_tokens=max_new_tokens,
            session=session,
            guided=guided,
            recall=recall if isinstance(recall, str) else RecallWindow(start=recall[0], end=recall[1]),
            detail=detail,
        )
        q = Question(qid, stream, max_new_tokens, self._cancel)
        link.send(msg, q, qid)
        return q

    def _cancel(self, q: Question) -> None:
        link = self._link
        if link is not None and link.waiting(q.id):
            link.send(Cancel(id=q.id))

    # --- streams -----------------------------------------------------------------------------------
    async def streams(self) -> tuple[StreamInfo, ...]:
        """The streams this token may see, as they are now."""
        waiter = Unnamed(StreamList)
        self._current().send_unnamed(Streams(), waiter)
        reply = await waiter.future
        assert isinstance(reply, StreamList)
        return reply.streams

    async def add_stream(self, name: str, url: str) -> StreamAdded:
        """Start ingesting ``url`` (anything ``livesight serve --source`` takes, within the server's
        allow-lists) as stream ``name``; needs the admin token."""
        return await self._request(StreamAdded, lambda rid: _build(AddStream, name=name, url=url, id=rid))

    async def remove_stream(self, name: str) -> StreamRemoved:
        """Stop and forget stream ``name``; needs the admin token."""
        return await self._request(StreamRemoved, lambda rid: _build(RemoveStream, name=name, id=rid))

    # --- watches and the timeline ------------------------------------------------------------------
    async def watch(
        self,
        stream: str,
        condition: str,
        *,
        every_s: float = 5.0,
        min_duration_s: float = 0.0,
        cooldown_s: float = 60.0,
        threshold: float = 0.6,
        describe: bool = False,
        webhook: str | None = None,
    ) -> WatchInfo:
        """Watch ``stream`` for ``condition`` (asked as a yes/no question every ``every_s`` seconds of its
        video); alerts come to :meth:`follow` subscriptions of the stream (and ``webhook``). Admin token.
        Raises :class:`TooManyWatchesError` at the cap, :class:`BadRequestError` for a bad value."""
        reply = await self._request(
            Watching,
            lambda rid: _build(
                Watch,
                id=rid,
                stream=stream,
                condition=condition,
                every_s=every_s,
                min_duration_s=min_duration_s,
                cooldown_s=cooldown_s,
                threshold=threshold,
                describe=describe,
                webhook=webhook,
            ),
        )
        return reply.watch

    async def unwatch(self, watch: int) -> Unwatched:
        """Stop watch ``watch`` (its events stay); admin token. :class:`UnknownWatchError` if there is none."""
        return await self._request(Unwatched, lambda rid: _build(Unwatch, id=rid, watch=watch))

    async def watches(self, stream: str | None = None) -> tuple[WatchInfo, ...]:
        """The watches this token may see (of ``stream`` only, when given)."""
        reply = await self._request(WatchList, lambda rid: _build(Watches, id=rid, stream=stream))
        return reply.watches

    async def events(
        self,
        *,
        stream: str | None = None,
        watch: int | None = None,
        kind: Literal["alert", "caption"] | None = None,
        since: str | None = None,
        until: str | None = None,
        text: str | None = None,
        limit: int = 50,
    ) -> tuple[TimelineEvent, ...]:
        """Timeline entries, newest first. ``since``/``until``: ISO 8601 times or durations before now
        (``"1h"``); ``text``: full-text search over conditions, descriptions and captions."""
        reply = await self._request(
            EventList,
            lambda rid: _build(
                Events,
                id=rid,
                stream=stream,
                watch=watch,
                kind=kind,
                since=since,
                until=until,
                text=text,
                limit=limit,
            ),
        )
        return reply.events

    async def _request(self, reply: type[R], make: Callable[[str], Message]) -> R:
        """Send the request ``make(id)`` and wait for its one reply, of type ``reply``."""
        link = self._current()
        rid = self._next_id("r")
        waiter = Reply(reply)
        link.send(make(rid), waiter, rid)
        return await waiter.future

    # --- subscriptions -----------------------------------------------------------------------------
    async def subscribe(self, *streams: str) -> Subscription[Status]:
        """Follow ``streams``: the returned :class:`Subscription` yields each one's status now, then on
        every state change, across reconnections. Raises the server's error (an unknown stream is
        :class:`UnknownStreamError`) and then follows none of them."""
        sub: Subscription[Status] = Subscription(tuple(dict.fromkeys(streams)), self._unsubscribe)
        return await self._follow(sub)

    async def follow(self, *streams: str) -> Subscription[StreamPush]:
        """Like :meth:`subscribe`, and also each stream's watches' changes (``WatchStatus``) and their alerts
        (``Alert``, then ``AlertUpdate`` when a description is ready or the condition ended)."""
        kinds = (Status, WatchStatus, Alert, AlertUpdate)
        sub: Subscription[StreamPush] = Subscription(tuple(dict.fromkeys(streams)), self._unsubscribe, kinds)
        return await self._follow(sub)

    async def _follow(self, sub: Subscription[T]) -> Subscription[T]:
        if not sub.streams:
            raise BadRequestError("subscribe to at least one stream")
        link = self._current()
        names = sub.names
        waiters: list[Unnamed] = []
        try:
            for name in names:
                followers = self._subscribers.setdefault(name, [])
                followers.append(sub)
                if len(followers) == 1:
                    waiters.append(self._send_subscribe(link, _build(Subscribe, stream=name)))
                elif name in self._confirming:  # another subscription's subscribe is under way: share it
                    waiters.append(self._confirming[name])
                elif name in self._last:
                    sub.deliver(self._last[name])
        except ClientError:
            self._unsubscribe(sub)
            raise
        results = await asyncio.gather(*(w.future for w in waiters), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            self._unsubscribe(sub)
            raise failed
        return sub

    def _send_subscribe(self, link: Link, msg: Subscribe) -> Unnamed:
        """Subscribe the connection to ``msg.stream``; the waiter settles with its first status."""
        waiter = Unnamed(Status, msg.stream)
        link.send_unnamed(msg, waiter)
        self._confirming[msg.stream] = waiter

        def confirmed(_: object) -> None:
            if self._confirming.get(msg.stream) is waiter:
                del self._confirming[msg.stream]

        waiter.future.add_done_callback(confirmed)
        return waiter

    def _unsubscribe(self, sub: Subscription[Any]) -> None:
        sub._end()
        for name, followers in list(self._subscribers.items()):
            if sub not in followers:
                continue
            followers.remove(sub)
            if not followers:
                del self._subscribers[name]
                self._last.pop(name, None)
                if self._link is not None and self._link.closed is None:
                    self._link.send(Unsubscribe(stream=name))

    def _on_status(self, status: Status) -> None:
        if status.stream in self._subscribers:
            self._last[status.stream] = status
        for sub in self._subscribers.get(status.stream, ()):
            sub.deliver(status)

    def _on_push(self, msg: WatchStatus | Alert | AlertUpdate) -> None:
        for sub in self._subscribers.get(msg.stream, ()):
            sub.deliver(msg)

    # --- the connection ----------------------------------------------------------------------------
    def _current(self) -> Link:
        if self._ended is not None:
            raise self._ended
        if self._link is None:
            if self._reconnecting is None:
                raise Disconnected("not connected: call open() or use 'async with'", retryable=False)
            raise Disconnected(f"the connection to {self.url} dropped; reconnecting")
        return self._link

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    async def _open_link(self) -> Link:
        link = await Link.open(
            self.url,
            self._token,
            timeout=self._timeout,
            on_status=self._on_status,
            on_push=self._on_push,
            on_close=self._link_closed,
        )
        self._ready = link.ready
        return link

    def _link_closed(self, link: Link, why: ClientError) -> None:
        if self._link is not link:
            return
        self._link = None
        if self._ended is not None:
            return
        log.info("connection to %s lost: %s", self.url, why.message)
        self._tell(False, why)
        if self._reconnect:
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name=f"livesight-client-reconnect:{id(self)}"
            )
        else:
            self._end_subscriptions(why)

    async def _reconnect_loop(self) -> None:
        try:
            while self._ended is None:
                await asyncio.sleep(self._backoff.next())
                try:
                    link = await self._open_link()
                except ClientError as exc:
                    if not exc.retryable:
                        log.warning("reconnecting to %s failed for good: %s", self.url, exc)
                        self._ended = exc
                        self._tell(False, exc)
                        self._end_subscriptions(exc)
                        return
                    log.debug("reconnecting to %s: %s", self.url, exc)
                    continue
                self._backoff.reset()
                self._link = link
                log.info("reconnected to %s", self.url)
                await self._subscribe_again(link)
                if self._link is link:
                    self._tell(True, None)
                return
        finally:
            if self._reconnecting is asyncio.current_task():
                self._reconnecting = None

    async def _subscribe_again(self, link: Link) -> None:
        """Subscribe the new connection to every stream followed; a stream gone reads as removed."""
        try:
            waiters = {name: self._send_subscribe(link, Subscribe(stream=name)) for name in self._subscribers}
        except ClientError:
            return  # the new connection dropped already; its own close starts the next attempt
        results = await asyncio.gather(*(w.future for w in waiters.values()), return_exceptions=True)
        for name, result in zip(waiters, results, strict=True):
            if not isinstance(result, BaseException) or isinstance(result, Disconnected):
                continue  # subscribed; or the new connection dropped too, and the next one tries again
            followers = self._subscribers.pop(name, [])
            self._last.pop(name, None)
            for sub in followers:
                if isinstance(result, UnknownStreamError):
                    sub.deliver(Status(stream=name, state="removed"))
                    sub.forget(name)
                elif isinstance(result, ClientError):
                    sub.fail(result)

    def _end_subscriptions(self, why: ClientError) -> None:
        for followers in list(self._subscribers.values()):
            for sub in followers:
                sub.fail(why)
        self._subscribers.clear()
        self._last.clear()

    def _tell(self, connected: bool, why: ClientError | None) -> None:
        if self._on_connection is not None:
            self._on_connection(connected, why)


def _build(cls: type[M], **fields: Any) -> M:
    """A client message, validated here: a bad value is a :class:`BadRequestError` before it is sent."""
    try:
        return cls(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise BadRequestError(f"{cls.model_fields['type'].default}: field {where!r}: {first['msg']}") from None
