"""A question in flight: its answer's pieces as they come, then the whole answer."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

from livesight.client.errors import ClientError, QuestionCancelled, ServerError
from web.server_messages import Answer, Cancelled, Error, ServerMessage, Token


class Question:
    """One ``ask``: iterate it for the answer's text pieces as they are generated, await it for the whole
    :class:`Answer` (text, context, timing). Both raise the question's error (a :class:`ClientError`;
    :class:`QuestionCancelled` after :meth:`cancel`).

    ::

        q = client.ask("demo", "What is moving?")
        async for piece in q:
            print(piece, end="", flush=True)
        answer = await q

    The pieces are kept until read, at most ``max_new_tokens`` of them (the server sends no more), so a
    question that is only awaited holds a bounded buffer. They can be read once, by one reader.
    """

    def __init__(self, qid: str, stream: str, max_new_tokens: int, cancel: Callable[[Question], None]) -> None:
        self.id = qid
        self.stream = stream
        self._cancel = cancel
        self._pieces: deque[Token] = deque(maxlen=max_new_tokens)
        self._changed = asyncio.Event()
        self._answer: Answer | None = None
        self._error: ClientError | None = None
        self._done = asyncio.Event()

    # --- the reader's side -------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[str]:
        return self._texts()

    async def _texts(self) -> AsyncIterator[str]:
        async for msg in self.messages():
            if isinstance(msg, Token):
                yield msg.text

    async def messages(self) -> AsyncIterator[Token | Answer]:
        """The question's messages as they arrive: ``token`` messages, then the ``answer``."""
        while True:
            while self._pieces:
                yield self._pieces.popleft()
            if self._done.is_set():
                yield await self.answer()
                return
            self._changed.clear()
            await self._changed.wait()

    async def answer(self) -> Answer:
        """The whole answer, once it is complete."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer

    def __await__(self) -> Generator[Any, None, Answer]:
        return self.answer().__await__()

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Ask the server to stop; the question then ends with :class:`QuestionCancelled` (or with its
        answer, if that was complete first). Does nothing once the question has ended."""
        if not self.done():
            self._cancel(self)

    # --- the connection's side ---------------------------------------------------------------------
    def deliver(self, msg: ServerMessage) -> bool:
        """Take one of this question's messages; True when it was the last."""
        if isinstance(msg, Token):
            self._pieces.append(msg)
            self._changed.set()
            return False
        if isinstance(msg, Answer):
            self._answer = msg
        elif isinstance(msg, Cancelled):
            self._error = QuestionCancelled(f"question {self.id!r} was cancelled")
        elif isinstance(msg, Error):
            self._error = ServerError.from_wire(msg)
        else:
            return False
        self._finish()
        return True

    def fail(self, error: ClientError) -> None:
        if not self.done():
            self._error = error
            self._finish()

    def _finish(self) -> None:
        self._done.set()
        self._changed.set()
