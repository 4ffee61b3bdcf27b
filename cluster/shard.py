"""One engine shard: an :class:`~engine.engine.Engine` with its own model and a share of the streams.

Under ``serve --ray`` this class is the body of a Ray actor (``ray.remote(Shard)``, see
:mod:`cluster.gateway`); it is plain async Python and knows nothing of Ray, so it also runs (and is
tested) in one process. Every method runs on the actor's event loop.

State: the engine (streams, the question queue, memories and cached prefixes) lives here and dies with the
process; what outlives it is the archive (``data_dir``, SQLite, shared by the shards of one machine) from
which a restarted shard rebuilds each stream's memory, and the gateway's placement map, which says which
streams the shard holds (:meth:`open` is given them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Sequence

from cluster.messages import Asked, Hello, Report
from cluster.relay import RelayedSource
from engine.build import EngineRecipe, build_engine, load_adapter, open_archive
from engine.engine import Engine, Question
from engine.events import FINAL, Cancelled, Failed, QuestionEvent, StreamEvent, StreamStatus
from engine.observer import NoObserver
from errors import LivesightError, ShardUnavailable, UnknownStream
from store.archive import Archive
from stream.factory import make_source
from stream.frame import Frame
from stream.source import Source, SourceState
from stream.spec import SourceSpec

log = logging.getLogger("livesight.shard")

#: Status changes kept for the gateway between two reports; more means it stopped reading (oldest dropped).
MAX_CHANGES = 4096
#: Ingest lags kept between two reports (for the gateway's metrics); the oldest are dropped beyond.
MAX_LAGS = 1024
#: Cancels that arrived before their question (both are sent at once; the order is not guaranteed).
EARLY_CANCELS = 1024


class _Lags(NoObserver):
    """The shard's engine observer: keeps frames' ingest lags for the next report (the gateway sees the
    questions' outcomes itself; the worker's busy time is not reported under --ray)."""

    def __init__(self) -> None:
        self.lags: deque[tuple[str, float]] = deque(maxlen=MAX_LAGS)

    def frame_ingested(self, stream: str, lag_s: float) -> None:
        self.lags.append((stream, lag_s))


class Shard:
    """See the module doc. ``open`` first (it loads the model); the other calls need it."""

    def __init__(self, index: int, recipe: EngineRecipe, *, report_s: float = 0.5) -> None:
        self.index = index
        self._recipe = recipe
        self._report_s = report_s
        self._engine: Engine | None = None
        self._archive: Archive | None = None
        self._model: tuple[str, int] = ("", 0)
        self._opening = asyncio.Lock()
        self._asked: dict[str, Question] = {}
        self._early: deque[str] = deque(maxlen=EARLY_CANCELS)
        self._changes: deque[StreamStatus] = deque(maxlen=MAX_CHANGES)
        self._changed = asyncio.Event()
        self._observer = _Lags()
        self._relays: dict[str, RelayedSource] = {}
        self._reader = 0  # which call of reports() is the current reader; an older one stops

    # --- lifecycle ---------------------------------------------------------------------------------
    async def open(self, specs: Sequence[SourceSpec]) -> Hello:
        """Load the model and open the archive (once), then make sure every stream of ``specs`` runs here;
        streams already running are kept. A stream's memory is rebuilt from the archive as it starts."""
        async with self._opening:
            if self._engine is None:
                adapter = await load_adapter(self._recipe)
                self._archive = await open_archive(self._recipe, adapter)
                engine = build_engine(self._recipe, adapter, self._archive, observer=self._observer, make=self._make)
                await engine.start([])
                self._engine = engine
                self._model = (adapter.model_id, adapter.tokens_per_frame)
            engine = self._engine
            refused: list[tuple[str, str]] = []
            for spec in specs:
                if spec.name not in engine.stream_names():
                    try:
                        self._add(engine, spec)
                    except LivesightError as exc:  # this stream only: the others start
                        log.warning("stream %s: cannot start on shard %d: %s", spec.name, self.index, exc.message)
                        refused.append((spec.name, exc.message))
        return Hello(
            shard=self.index,
            pid=os.getpid(),
            node=socket.gethostname(),
            model_id=self._model[0],
            tokens_per_frame=self._model[1],
            budget=engine.budget,
            streams=tuple(engine.stream_names()),
            refused=tuple(refused),
        )

    async def shutdown(self) -> None:
        """Stop taking questions; waiting and running ones end with :class:`~errors.ShuttingDown`."""
        if self._engine is not None:
            await self._engine.shutdown()

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.close()
        if self._archive is not None:
            await asyncio.to_thread(self._archive.close)
            self._archive = None

    # --- streams -----------------------------------------------------------------------------------
    async def add_stream(self, spec: SourceSpec) -> None:
        """Start ``spec`` here. Raises :class:`~errors.Conflict` and :class:`~errors.Busy`."""
        self._add(self._ready(), spec)

    async def remove_stream(self, name: str) -> None:
        """Stop ``name``; its archived clips are on disk when this returns (a shard taking the stream
        over rebuilds its memory from them). Raises :class:`UnknownStream`."""
        engine = self._ready()
        await engine.remove_stream(name)
        self._relays.pop(name, None)
        if self._archive is not None:
            await asyncio.to_thread(self._archive.flush)

    def _add(self, engine: Engine, spec: SourceSpec) -> None:
        engine.add_stream(spec)
        engine.subscribe(spec.name, self._on_status)
        if self._archive is not None:
            self._archive.adopt(spec.name)  # it may have been written by another shard until now

    def _make(self, spec: SourceSpec, fps: float) -> Source:
        if spec.kind == "webrtc":  # a WHIP publisher at the gateway: frames come with push()
            relay = self._relays[spec.name] = RelayedSource(spec.name, spec.display_url)
            return relay
        return make_source(spec, fps, lossless=self._recipe.lossless)

    async def latest_frame(self, name: str) -> Frame | None:
        """The newest frame of ``name`` here (the gateway's stream pictures). Raises :class:`UnknownStream`."""
        return await self._ready().latest_frame(name)

    async def push(self, name: str, frame: Frame) -> None:
        """A frame of a relayed stream (see :mod:`cluster.relay`). Raises :class:`UnknownStream`."""
        relay = self._relays.get(name)
        if relay is None:
            raise UnknownStream(f"no relayed stream named {name!r} on shard {self.index}")
        relay.put(frame)

    async def end_relay(self, name: str, state: str, error: str | None) -> None:
        """The publisher of a relayed stream left (``ended``) or failed (``offline``)."""
        relay = self._relays.get(name)
        if relay is not None:
            relay.end(SourceState(state), error)

    # --- questions ---------------------------------------------------------------------------------
    async def ask(self, asked: Asked) -> AsyncIterator[QuestionEvent]:
        """Answer ``asked``: its events as they come, the last one final. Refusals are a final
        :class:`Failed` event too, so a typed error always arrives as itself."""
        try:
            engine = self._ready()
        except LivesightError as exc:
            yield Failed(asked.id, exc)
            return
        if asked.ticket in self._early:
            yield Cancelled(asked.id)
            return
        # One event per generated piece plus the final one: bounded by the answer's length.
        events: asyncio.Queue[QuestionEvent] = asyncio.Queue(maxsize=asked.max_new_tokens + 8)
        q = Question(
            id=asked.id,
            stream=asked.stream,
            text=asked.text,
            max_new_tokens=asked.max_new_tokens,
            session=asked.session,
            reply=events.put_nowait,
            received=asked.received,
            guided=asked.guided,
            owner=asked.owner,
            recall=asked.recall,
            detail=asked.detail,
            turns=asked.turns,
        )
        final = False
        self._asked[asked.ticket] = q
        try:
            try:
                engine.submit(q)
            except LivesightError as exc:
                final = True
                yield Failed(q.id, exc)
                return
            while not final:
                ev = await events.get()
                final = isinstance(ev, FINAL)
                yield ev
        finally:
            del self._asked[asked.ticket]
            if not final:  # the gateway stopped listening (it cancelled the call): stop answering
                engine.cancel(q)

    async def cancel(self, ticket: str) -> None:
        q = self._asked.get(ticket)
        if q is None:
            self._early.append(ticket)
            return
        self._ready().cancel(q)

    # --- reports -------------------------------------------------------------------------------------
    async def reports(self) -> AsyncIterator[Report]:
        """The shard's news for the gateway, for as long as the shard lives: a :class:`Report` at once when a
        stream changes state, and every ``report_s`` seconds. One reader at a time: a newer call ends an
        older one."""
        engine = self._ready()
        self._reader += 1
        me = self._reader
        while me == self._reader:
            with contextlib.suppress(asyncio.TimeoutError):  # no change: report anyway
                await asyncio.wait_for(self._changed.wait(), self._report_s)
            self._changed.clear()
            changes = tuple(self._changes)
            self._changes.clear()
            lags = tuple(self._observer.lags)
            self._observer.lags.clear()
            yield Report(changes, tuple(engine.streams_info()), engine.queued, lags)

    def _on_status(self, ev: StreamEvent) -> None:
        if isinstance(ev, StreamStatus):  # watches are not run on shards (yet): nothing else comes
            self._changes.append(ev)
            self._changed.set()

    def _ready(self) -> Engine:
        if self._engine is None:
            raise ShardUnavailable(f"shard {self.index} is not open yet")
        return self._engine
