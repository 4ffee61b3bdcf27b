"""Bounded hand-offs on the frame path.

``ThreadSlot`` carries frames from a reader thread to the event loop. Both are bounded by construction;
the newest-frame-wins policy counts every frame it replaces.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from stream.frame import Frame


class ThreadSlot:
    """A bounded buffer from one producer thread to one asyncio consumer.

    Args:
        capacity: frames held at most.
        lossless: if False, ``put`` on a full slot replaces the oldest frame (newest wins) and reports a
            drop; if True, ``put`` waits for room, so no frame is lost (a file read as fast as possible).
    """

    def __init__(self, capacity: int = 1, *, lossless: bool = False) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._items: deque[Frame] = deque()
        self._capacity = capacity
        self._lossless = lossless
        self._cond = threading.Condition()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def put(self, frame: Frame) -> bool:
        """Hand a frame over (producer thread). Returns True if an older frame was dropped for it."""
        dropped = False
        with self._cond:
            if self._lossless:
                while len(self._items) >= self._capacity and not self._closed:
                    self._cond.wait(0.5)
            if self._closed:
                return False
            if len(self._items) >= self._capacity:
                self._items.popleft()
                dropped = True
            self._items.append(frame)
        self._wake()
        return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> Frame | None:
        """The oldest held frame, waiting if none; None once closed and empty."""
        while True:
            with self._cond:
                if self._items:
                    frame = self._items.popleft()
                    self._cond.notify_all()
                    return frame
                if self._closed:
                    return None
                self._ready.clear()
            await self._ready.wait()
