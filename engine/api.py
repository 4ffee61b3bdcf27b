"""What the web layer needs of an engine: one small Protocol, met by :class:`~engine.engine.Engine` (one
process) and by the Ray gateway (``cluster/gateway.py``, ``serve --ray``), which forwards to shards.

Everything here is called on the event loop. The calls that return at once answer from what the engine
holds in this process (the gateway: its placement map and the shards' latest reports); the typed errors
are the same on both sides (``errors/``), so ``web/`` never knows which engine it talks to.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import tzinfo
from typing import TYPE_CHECKING, Protocol

from engine.events import StatusListener, StreamInfo, TimelineEvent, WatchInfo
from engine.watches import WatchSpec
from store.events import EventQuery
from stream.frame import Frame
from stream.source import Source
from stream.spec import SourceSpec

if TYPE_CHECKING:
    from engine.engine import EngineSettings, Question


class EngineAPI(Protocol):
    #: where live streams' clock times are read (time windows in questions)
    timezone: tzinfo

    @property
    def settings(self) -> EngineSettings: ...

    @property
    def queued(self) -> int:
        """Questions waiting to be answered (all streams)."""
        ...

    # --- streams -----------------------------------------------------------------------------------
    def stream_names(self) -> list[str]: ...

    def streams_info(self) -> list[StreamInfo]: ...

    def stream_info(self, name: str) -> StreamInfo:
        """Raises :class:`~errors.UnknownStream`."""
        ...

    async def latest_frame(self, name: str) -> Frame | None:
        """The newest frame stream ``name``'s source delivered (None: none yet; the stream's picture).
        Raises :class:`~errors.UnknownStream`."""
        ...

    def source(self, name: str) -> Source | None:
        """The stream's source when it lives in this process (a WHIP publisher always does), else None."""
        ...

    def add_stream(self, spec: SourceSpec) -> None:
        """Start reading ``spec``. Raises :class:`~errors.Conflict` (name in use), :class:`~errors.Busy`
        (stream cap) or :class:`~errors.ShuttingDown`."""
        ...

    def add_source(self, spec: SourceSpec, source: Source) -> None:
        """Add a stream whose source was built here (a WHIP publisher); raises like :meth:`add_stream`."""
        ...

    async def remove_stream(self, name: str) -> None:
        """Stop and forget a stream. Raises :class:`~errors.UnknownStream`."""
        ...

    # --- questions -----------------------------------------------------------------------------------
    def submit(self, q: Question) -> None:
        """Queue a question; its events go to ``q.reply``. Raises the refusals known at once
        (:class:`~errors.UnknownStream`, :class:`~errors.NoVideo`, :class:`~errors.Busy`...); a refusal
        found later ends the question with a :class:`~engine.events.Failed` event instead."""
        ...

    def cancel(self, q: Question) -> None:
        """Stop ``q``; its owner receives :class:`~engine.events.Cancelled`."""
        ...

    # --- status pushes -------------------------------------------------------------------------------
    def subscribe(self, name: str, listener: StatusListener) -> None:
        """Send ``listener`` the stream's status now and on every change. Raises
        :class:`~errors.UnknownStream`."""
        ...

    def unsubscribe(self, name: str, listener: StatusListener) -> None: ...

    def listen(self, listener: StatusListener) -> None:
        """Hear every stream's events (status changes, watches, alerts)."""
        ...

    def unlisten(self, listener: StatusListener) -> None: ...

    # --- watches and the timeline --------------------------------------------------------------------
    async def add_watch(self, spec: WatchSpec) -> WatchInfo:
        """Raises :class:`~errors.UnknownStream`, :class:`~errors.BadRequest`, :class:`~errors.Busy`..."""
        ...

    async def remove_watch(self, watch_id: int) -> WatchInfo: ...

    def watches(self, streams: Sequence[str] | None = None) -> list[WatchInfo]: ...

    async def events(self, query: EventQuery) -> list[TimelineEvent]:
        """Timeline entries matching ``query``, newest first."""
        ...

    async def snapshot(self, event: int, streams: frozenset[str] | None = None) -> bytes | None: ...

    @property
    def keeps_events(self) -> bool: ...

    # --- lifecycle -----------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop taking questions; waiting and running ones end with :class:`~errors.ShuttingDown`."""
        ...

    async def close(self) -> None: ...
