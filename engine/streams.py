"""A stream as the event loop owns it: its source, the task that reads it, and its pending frame.

Everything here is touched only on the event loop. The model side of a stream (its memory and cached
prefix) belongs to the inference thread (:mod:`engine.inference`); what the loop knows of it is the last
:class:`~engine.inference.MemorySnapshot` the worker handed back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from engine.events import ArchiveInfo, StreamInfo, TierInfo
from engine.inference import MemorySnapshot
from errors import LivesightError
from memory import TierStats
from store.archive import ArchiveSummary
from stream.frame import Frame
from stream.source import Source, SourceState
from stream.spec import SourceSpec

log = logging.getLogger("livesight.engine")


@dataclass(eq=False)
class LiveStream:
    """One stream on the event loop.

    The pending slot holds one frame for the inference worker. A source that keeps real time
    (``source.lossless`` False) replaces a frame the worker has not taken yet (newest wins, counted in
    ``replaced``); a lossless one (a file read as fast as possible) waits until the worker takes it.
    """

    key: int  # unique per stream added: names the stream's memory on the inference side
    spec: SourceSpec
    source: Source
    fps: float
    pending: Frame | None = None
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    replaced: int = 0  # pending frames replaced by newer ones before the worker took them
    memory: MemorySnapshot | None = None  # the inference thread's latest, delivered with its results
    error: str | None = None  # why the source failed for good
    task: asyncio.Task[None] | None = None
    published: str | None = None  # the last state pushed to subscribers
    #: the newest frame the source delivered (frozen, read-only: safe to read while the worker encodes it)
    latest: Frame | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> SourceState:
        return SourceState.OFFLINE if self.error is not None else self.source.stats.state

    async def feed(self, wake: asyncio.Event) -> None:
        """Move the source's frames into the pending slot until the source ends, then close it; setting
        ``wake`` tells the worker a frame waits. A failing source takes only this stream offline."""
        try:
            async for frame in self.source:
                self.latest = frame
                if self.source.lossless:
                    while self.pending is not None:
                        self.taken.clear()
                        await self.taken.wait()
                elif self.pending is not None:
                    self.replaced += 1
                self.pending = frame
                wake.set()
            log.info("stream %s: %s", self.name, self.source.stats.state.value)
        except LivesightError as exc:
            self.error = exc.message
            log.warning("stream %s: offline: %s", self.name, exc.message)
        except Exception:  # a bug in a source: this stream goes offline, the others go on
            self.error = "internal error in the source; see the server log"
            log.exception("stream %s: source failed", self.name)
        finally:
            await self.source.close()

    def take(self) -> Frame | None:
        """The pending frame, if any, for the worker (which then owns it)."""
        frame, self.pending = self.pending, None
        if frame is not None:
            self.taken.set()
        return frame

    def info(self, now: float, tz: tzinfo, archive: ArchiveSummary | None = None) -> StreamInfo:
        mem = self.memory
        stats = mem.stats if mem else None
        captured = mem.last_captured_at if mem else None
        return StreamInfo(
            name=self.name,
            source=self.spec.display_url,
            state=self.state.value,
            fps=self.fps,
            frames=mem.ingested if mem else 0,
            dropped=self.replaced + (mem.failed if mem else 0) + self.source.stats.dropped,
            reconnects=self.source.stats.reconnects,
            memory_tokens=stats.tokens if stats else 0,
            memory_frames=stats.frames if stats else 0,
            memory_span=(stats.start, stats.end)
            if stats and stats.start is not None and stats.end is not None
            else None,
            memory_tiers=tuple(_tier(t) for t in stats.tiers) if stats else (),
            long_term=stats.long_term if stats else 0,
            last_frame_age_s=None if captured is None else round(now - captured, 3),
            error=self.error or self.source.stats.error,
            memory_clock_span=_clock_span(stats.wall_start, stats.wall_end, tz) if stats else None,
            restored_frames=mem.restored_frames if mem else 0,
            archive=None if archive is None else _archive(archive, tz),
        )


def _clock_span(start: float | None, end: float | None, tz: tzinfo) -> tuple[str, str] | None:
    if start is None or end is None:
        return None
    iso = [datetime.fromtimestamp(t, tz).isoformat(timespec="seconds") for t in (start, end)]
    return iso[0], iso[1]


def _archive(a: ArchiveSummary, tz: tzinfo) -> ArchiveInfo:
    span = (a.start, a.end) if a.start is not None and a.end is not None else None
    return ArchiveInfo(a.clips, a.bytes, span, _clock_span(a.wall_start, a.wall_end, tz), a.dropped, a.error)


def _tier(t: TierStats) -> TierInfo:
    span = (t.start, t.end) if t.start is not None and t.end is not None else None
    return TierInfo(tier=t.tier, tokens_per_frame=t.tokens_per_frame, tokens=t.tokens, frames=t.frames, span=span)
