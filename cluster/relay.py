"""A stream whose frames arrive from elsewhere: the shard's side of a WHIP publisher (``serve --ray``).

The publisher's WebRTC connection ends at the gateway (it owns the :class:`~stream.webrtc.WebRTCSource`);
the gateway pushes each sampled frame to the shard holding the stream, which feeds it to its engine through
a :class:`RelayedSource`. The slot holds one frame: a newer one replaces a frame the engine has not taken
(counted as dropped), as in every live source.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from stream.frame import Frame
from stream.source import SourceState, SourceStats


class RelayedSource:
    """A :class:`~stream.source.Source` fed by :meth:`put` and ended by :meth:`end` (event loop only)."""

    lossless = False
    wall_clock = True  # frames are stamped where they arrived (the gateway)

    def __init__(self, name: str, display_url: str = "webrtc") -> None:
        self.name = name
        self.display_url = display_url
        self.stats = SourceStats()
        self._newest: Frame | None = None
        self._ready = asyncio.Event()
        self._ended: SourceState | None = None

    def put(self, frame: Frame) -> None:
        """The newest frame from the publisher; replaces one not yet taken."""
        if self._ended is not None:
            return
        if self._newest is not None:
            self.stats.dropped += 1
        self._newest = frame
        self.stats.frames += 1
        self.stats.state = SourceState.LIVE
        self._ready.set()

    def end(self, state: SourceState = SourceState.ENDED, error: str | None = None) -> None:
        """The publisher is gone (``ENDED``) or failed (``OFFLINE`` with ``error``): iteration ends."""
        if self._ended is None:
            self._ended = state
            self.stats.error = error
            self._ready.set()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        while True:
            if self._newest is None and self._ended is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            frame, self._newest = self._newest, None
            if frame is not None:
                yield frame
            elif self._ended is not None:
                self.stats.state = self._ended
                return

    async def close(self) -> None:
        self.end()
