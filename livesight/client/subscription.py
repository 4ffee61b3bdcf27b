"""Following streams: an async iterator of their status updates (and, when asked, their watches' changes and
alerts) that survives reconnections."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from livesight.client.errors import ClientError
from web.server_messages import Alert, AlertUpdate, Status, WatchStatus

#: Everything a stream's subscribers hear: its status, its watches' changes, their alerts.
StreamPush = Status | WatchStatus | Alert | AlertUpdate
T = TypeVar("T", bound=StreamPush)

#: Status updates kept for a reader that falls behind; older ones are dropped (and counted) first.
BUFFER = 256


class Subscription(Generic[T]):
    """Status updates of some streams (:meth:`Client.subscribe`; :meth:`Client.follow` adds their watches'
    ``watch_status`` changes and their ``alert`` and ``alert_update`` messages): one at once for each, then
    one on every state change, and ``state == "removed"`` when a stream is removed (a stream added again
    under that name is heard again). Across a dropped connection the client reconnects and subscribes
    again, which yields each stream's status anew; a stream that no longer exists then reads as removed
    and is no longer followed, and once none is followed the iteration ends.

    ::

        async with await client.subscribe("demo") as sub:
            async for status in sub:
                print(status.stream, status.state)

    At most :data:`BUFFER` updates wait for a slow reader; older ones are dropped and counted in
    ``dropped``.
    """

    def __init__(
        self,
        streams: tuple[str, ...],
        close: Callable[[Subscription[Any]], None],
        kinds: tuple[type[StreamPush], ...] = (Status,),
    ) -> None:
        self.names = streams  # in the order asked for
        self.streams: frozenset[str] = frozenset(streams)
        self.dropped = 0
        self._close = close
        self._kinds = kinds
        self._queue: deque[T] = deque()
        self._changed = asyncio.Event()
        self._ended = False
        self._error: ClientError | None = None

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._ended or not self.streams:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        return self._queue.popleft()

    async def close(self) -> None:
        """Stop following these streams (the server is told when no other subscription follows them)."""
        if not self._ended:
            self._end()
            self._queue.clear()
            self._close(self)

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- the client's side -------------------------------------------------------------------------
    def deliver(self, msg: StreamPush) -> None:
        if self._ended or not isinstance(msg, self._kinds):
            return
        if len(self._queue) >= BUFFER:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(msg)  # type: ignore[arg-type]  # one of the kinds this subscription was made for
        self._changed.set()

    def forget(self, stream: str) -> None:
        """``stream`` is no longer followed (it did not exist after a reconnection)."""
        self.streams -= {stream}
        self._changed.set()

    def fail(self, error: ClientError) -> None:
        """End the iteration with ``error`` (after the updates already queued)."""
        if not self._ended:
            self._error = error
            self._changed.set()

    def _end(self) -> None:
        self._ended = True
        self._changed.set()
