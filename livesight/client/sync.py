"""A blocking client for scripts: :class:`Client` on a private event loop in its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from livesight.client.client import Client
from livesight.client.question import Question
from livesight.client.subscription import StreamPush, Subscription
from web.server_messages import (
    Answer,
    Status,
    StreamAdded,
    StreamInfo,
    StreamRemoved,
    TimelineEvent,
    Unwatched,
    WatchInfo,
)

T = TypeVar("T")
S = TypeVar("S", bound=StreamPush)


class _Loop:
    """An event loop running in a daemon thread; coroutines are run on it and waited for."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="livesight-client", daemon=True)
        self._thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        async def call() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # a timeout or a KeyboardInterrupt in the caller's thread stops the work too
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncQuestion:
    """A question in flight: iterate it for the answer's pieces, then call :meth:`answer`."""

    def __init__(self, q: Question, loop: _Loop) -> None:
        self._q = q
        self._loop = loop
        self.id = q.id

    def __iter__(self) -> Iterator[str]:
        pieces = aiter(self._q)
        while True:
            try:
                yield self._loop.run(lambda: anext(pieces))
            except StopAsyncIteration:
                return

    def answer(self, timeout: float | None = None) -> Answer:
        """The whole answer; raises the question's error (``TimeoutError`` after ``timeout`` seconds)."""
        return self._loop.run(self._q.answer, timeout)

    def cancel(self) -> None:
        self._loop.run(_now(self._q.cancel))


class SyncSubscription(Generic[S]):
    """Status updates of the streams subscribed to (with :meth:`SyncClient.follow`, their watches' changes
    and alerts too), as a blocking iterator; :meth:`close` stops them."""

    def __init__(self, sub: Subscription[S], loop: _Loop) -> None:
        self._sub = sub
        self._loop = loop

    def __iter__(self) -> Iterator[S]:
        while True:
            try:
                yield self._loop.run(self._sub.__anext__)
            except StopAsyncIteration:
                return

    def next(self, timeout: float | None = None) -> S:
        """The next update (``TimeoutError`` after ``timeout`` seconds; ``StopIteration`` at the end)."""
        try:
            return self._loop.run(self._sub.__anext__, timeout)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.run(self._sub.close)

    def __enter__(self) -> SyncSubscription[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncClient:
    """The blocking form of :class:`Client`, for scripts; the same calls, the same errors::

        with SyncClient("ws://127.0.0.1:8765/v1/ws", token) as client:
            q = client.ask("demo", "What do you see?")
            for piece in q:
                print(piece, end="", flush=True)
            print(q.answer().context)

    Connects on construction (raising what :meth:`Client.open` raises). It runs the asynchronous client on
    a private event loop in a daemon thread, stopped by :meth:`close`. Calls may come from any thread.
    """

    def __init__(self, url: str, token: str, **options: Any) -> None:
        self._loop = _Loop()
        try:
            self._client = self._loop.run(lambda: Client.connect(url, token, **options))
        except BaseException:
            self._loop.stop()
            raise

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
    ) -> SyncQuestion:
        q = self._loop.run(
            _now(
                lambda: self._client.ask(
                    stream,
                    question,
                    max_new_tokens=max_new_tokens,
                    session=session,
                    guided=guided,
                    recall=recall,
                    detail=detail,
                )
            )
        )
        return SyncQuestion(q, self._loop)

    def streams(self) -> tuple[StreamInfo, ...]:
        return self._loop.run(self._client.streams)

    def add_stream(self, name: str, url: str) -> StreamAdded:
        return self._loop.run(lambda: self._client.add_stream(name, url))

    def remove_stream(self, name: str) -> StreamRemoved:
        return self._loop.run(lambda: self._client.remove_stream(name))

    def subscribe(self, *streams: str) -> SyncSubscription[Status]:
        return SyncSubscription(self._loop.run(lambda: self._client.subscribe(*streams)), self._loop)

    def follow(self, *streams: str) -> SyncSubscription[StreamPush]:
        return SyncSubscription(self._loop.run(lambda: self._client.follow(*streams)), self._loop)

    def watch(self, stream: str, condition: str, **options: Any) -> WatchInfo:
        """See :meth:`Client.watch` (the same keyword options)."""
        return self._loop.run(lambda: self._client.watch(stream, condition, **options))

    def unwatch(self, watch: int) -> Unwatched:
        return self._loop.run(lambda: self._client.unwatch(watch))

    def watches(self, stream: str | None = None) -> tuple[WatchInfo, ...]:
        return self._loop.run(lambda: self._client.watches(stream))

    def events(self, **query: Any) -> tuple[TimelineEvent, ...]:
        """See :meth:`Client.events` (the same keyword options)."""
        return self._loop.run(lambda: self._client.events(**query))

    @property
    def connected(self) -> bool:
        return self._client.connected

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            try:
                self._loop.run(self._client.close)
            finally:
                self._loop.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _now(fn: Callable[[], T]) -> Callable[[], Coroutine[Any, Any, T]]:
    """``fn`` (a plain call that must run on the loop's thread) as a coroutine function."""

    async def call() -> T:
        return fn()

    return call
