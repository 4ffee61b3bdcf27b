"""The source interface, its states, and a base class for sources that read in a thread."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

import numpy as np

from errors import SourceError
from stream.frame import Frame
from stream.handoff import ThreadSlot
from stream.sampler import Sampler


class SourceState(str, enum.Enum):
    STARTING = "starting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"
    ENDED = "ended"


class SourceStats:
    """Counters a source keeps; read by the engine for the ``streams`` message.

    Setting ``state`` to a new value calls the watcher (see :meth:`watch`) from whichever thread set it,
    so the owner hears of every transition as it happens instead of polling for it.
    """

    __slots__ = ("_state", "_watcher", "dropped", "error", "frames", "reconnects")

    def __init__(
        self,
        state: SourceState = SourceState.STARTING,
        frames: int = 0,  # sampled frames emitted
        dropped: int = 0,  # sampled frames replaced before anyone took them
        reconnects: int = 0,
        error: str | None = None,  # last error, credentials already removed
    ) -> None:
        self._state = state
        self._watcher: Callable[[SourceState], None] | None = None
        self.frames = frames
        self.dropped = dropped
        self.reconnects = reconnects
        self.error = error

    @property
    def state(self) -> SourceState:
        return self._state

    @state.setter
    def state(self, value: SourceState) -> None:
        if value is self._state:
            return
        self._state = value
        watcher = self._watcher
        if watcher is not None:
            watcher(value)

    def watch(self, watcher: Callable[[SourceState], None] | None) -> None:
        """Call ``watcher(new_state)`` on every state change (from the thread that made it); None stops."""
        self._watcher = watcher


@runtime_checkable
class Source(Protocol):
    """A video source: an async iterator of sampled frames, with a close.

    Iteration ends when the source has ended for good (``stats.state`` is then ENDED or OFFLINE);
    a permanent failure raises :class:`SourceError`.
    """

    name: str
    display_url: str  # the URL with any credentials removed
    stats: SourceStats
    #: True: the source waits for its consumer and loses no frame (a file read as fast as possible);
    #: False: it keeps real time, and a consumer that falls behind gets the newest frame.
    lossless: bool
    #: True: frames' ``captured_at`` is when they were seen (a camera, a publisher, the demo at real pace),
    #: so time is told by the clock; False: only stream time means anything (a file).
    wall_clock: bool

    def __aiter__(self) -> AsyncIterator[Frame]: ...

    async def close(self) -> None: ...


class ThreadedSource:
    """Base for sources whose blocking work (decoding, drawing) runs in one owned thread.

    Subclasses implement :meth:`_run`, which produces frames until ``self._stop`` is set, checking
    ``self._sampler.due(pts)`` *before* converting a frame (conversion is the expensive part) and calling
    :meth:`_emit` for each kept frame. The hand-off to the async side is a bounded :class:`ThreadSlot`:
    ``lossless=False`` (live sources) keeps only the newest frame and counts the rest as dropped;
    ``lossless=True`` (a file read as fast as possible) makes the reader wait instead.
    """

    def __init__(self, name: str, display_url: str, fps: float, *, lossless: bool = False) -> None:
        self.name = name
        self.display_url = display_url
        self.stats = SourceStats()
        self.lossless = lossless
        self.wall_clock = False
        self._sampler = Sampler(fps)
        self._slot = ThreadSlot(capacity=1, lossless=lossless)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._index = 0
        self._pts_offset = 0.0
        self._last_pts: float | None = None

    # --- producer side (reader thread) ---------------------------------------------------------
    def _run(self) -> None:
        raise NotImplementedError

    def _emit(self, pts: float, image: np.ndarray, captured_at: float | None = None) -> None:
        """Hand on a kept frame; ``captured_at`` defaults to now (sources that know better pass it)."""
        # Stream time never goes backwards downstream: a source whose clock jumps back (a looping or
        # concatenated file, a camera that restarted) continues after the last frame instead.
        pts += self._pts_offset
        if self._last_pts is not None and pts <= self._last_pts:
            self._pts_offset += self._last_pts - pts + self._sampler.period
            pts = self._last_pts + self._sampler.period
        self._last_pts = pts
        when = time.time() if captured_at is None else captured_at
        frame = Frame(stream=self.name, index=self._index, pts=pts, captured_at=when, image=image)
        self._index += 1
        self.stats.frames += 1
        if self._slot.put(frame):
            self.stats.dropped += 1

    def _thread_main(self) -> None:
        try:
            self._run()
            if not self._stop.is_set() and self.stats.state is not SourceState.OFFLINE:
                self.stats.state = SourceState.ENDED
        except SourceError as exc:
            self._failure = exc
            self.stats.error = exc.message
            self.stats.state = SourceState.OFFLINE
        except Exception as exc:  # a bug in a reader must reach the consumer, not die with the thread
            self._failure = exc
            self.stats.error = f"{type(exc).__name__}: {exc}"
            self.stats.state = SourceState.OFFLINE
        finally:
            self._slot.close()

    # --- consumer side (event loop) ------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        if self._thread is None:
            self._slot.bind(asyncio.get_running_loop())
            self._thread = threading.Thread(target=self._thread_main, name=f"source:{self.name}", daemon=True)
            self._thread.start()
        while True:
            frame = await self._slot.get()
            if frame is None:
                break
            yield frame
        if self._failure is not None and not self._stop.is_set():
            failure = self._failure
            if isinstance(failure, SourceError):
                raise failure
            raise SourceError(f"source {self.name!r} failed: {self.stats.error}") from failure

    async def close(self) -> None:
        self._stop.set()
        self._slot.close()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, 5.0)

    def _sleep(self, seconds: float) -> bool:
        """Wait in the reader thread; returns False as soon as the source is closed."""
        return not self._stop.wait(seconds) if seconds > 0 else not self._stop.is_set()


SourceFactory = Callable[[], Source]
