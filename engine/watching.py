"""The event loop's side of watches: the registry, each watch's detector and schedule, the timeline entries
they make, and what is told to whom.

- **Registry.** Watches come from the configuration file (``origin`` "config": reconciled with the stored
  ones at every start, by stream and condition) and from clients at run time ("api"); with an event store
  every change is committed before it is acknowledged, and everything comes back after a restart (with
  each watch's last alert, so cooldowns outlive it). Without one they live in memory only.
- **Scheduling.** After every ingest the engine calls :meth:`Watching.ingested` with each stream's newest
  memory time; a watch whose period has passed becomes due in the :class:`~engine.schedule.Background`
  slots (a replaced one is counted as dropped). Captions (``captions``: seconds per stream) come due the
  same way.
- **Events.** The worker hands each evaluation back (:meth:`Watching.evaluated`); the
  :class:`~engine.watches.Detector` decides; an alert becomes a stored timeline entry with the frame's JPEG
  (written off the loop by the store), an :class:`Alert` to the stream's subscribers and the engine-wide
  listeners (webhooks), a description to generate when the watch asks for one (then an
  :class:`AlertUpdate`), and an :class:`AlertUpdate` when the condition stops holding.

Event loop only; never blocks (the store's writes are queued, its reads run in a thread).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from urllib.parse import urlsplit

from engine.events import Alert, AlertUpdate, StreamEvent, TimelineEvent, WatchInfo, WatchStatus
from engine.inference import Evaluation, Generated
from engine.observer import EngineObserver
from engine.schedule import Background, Generation
from engine.watches import (
    CAPTION,
    DESCRIBE,
    MAX_WATCHES,
    MAX_WATCHES_PER_STREAM,
    QUESTION,
    Detector,
    Origin,
    Schedule,
    WatchSpec,
    check,
)
from errors import BadRequest, Busy, Internal, LivesightError, TooManyWatches, UnknownWatch
from store.events import EventQuery, EventRecord, EventStore, WatchRecord

log = logging.getLogger("livesight.watches")

#: Recent timeline entries kept in memory, so an update can carry the whole entry.
RECENT = 256
#: Longest description or caption kept, in characters (one sentence).
MAX_TEXT_CHARS = 400


@dataclass(eq=False)
class Watch:
    """A registered watch and what it has seen (event loop only)."""

    id: int
    spec: WatchSpec
    detector: Detector
    schedule: Schedule
    evaluations: int = 0
    dropped: int = 0
    errors: int = 0
    alerts: int = 0
    score: float | None = None
    evaluated_at: float | None = None  # wall clock
    evaluated_stream_time: float | None = None
    error: str | None = None
    open_event: int | None = None  # the alert of the episode under way

    @property
    def question(self) -> str:
        return QUESTION.format(condition=self.spec.condition.strip().rstrip(".?!"))


@dataclass
class _Captions:
    every_s: Mapping[str, float]
    schedules: dict[str, Schedule] = field(default_factory=dict)


class Watching:
    """Watches, their schedules and their events (see the module doc)."""

    def __init__(
        self,
        *,
        background: Background,
        publish: Callable[[StreamEvent], None],
        observer: EngineObserver,
        store: EventStore | None,
        clock: Callable[[], float],
        timezone: tzinfo,
        captions: Mapping[str, float] | None = None,
    ) -> None:
        self.background = background
        self.store = store
        self._publish = publish
        self._observer = observer
        self._clock = clock
        self._tz = timezone
        self._watches: dict[int, Watch] = {}
        self._ids = itertools.count(1)  # without a store
        self._recent: OrderedDict[int, TimelineEvent] = OrderedDict()
        self._captions = _Captions(dict(captions or {}))
        self._memory_event_ids = itertools.count(1)  # without a store

    # --- the registry --------------------------------------------------------------------------------
    async def load(self, config: Sequence[WatchSpec]) -> None:
        """Bring back the stored watches and reconcile them with the configuration file's (by stream and
        condition: changed settings are updated, new ones added, ones no longer listed removed)."""
        stored: list[WatchRecord] = []
        last: dict[int, float] = {}
        if self.store is not None:
            stored, last = await asyncio.to_thread(_read_watches, self.store)
        for rec in stored:
            self._register(rec.id, _spec(rec), last.get(rec.id))
        wanted = {(s.stream, s.condition): s for s in config}
        for w in [w for w in self._watches.values() if w.spec.origin == "config"]:
            spec = wanted.pop((w.spec.stream, w.spec.condition), None)
            if spec is None:
                await self.remove(w.id)
            elif spec != w.spec:
                await self._persist_update(w.id, spec)
                self._replace(w, spec)
        for spec in wanted.values():
            try:
                await self.add(spec)
            except LivesightError as exc:  # the stream is full of watches added at run time, say
                log.error("watch %r on %s from the configuration not added: %s", spec.condition, spec.stream, exc)
        if self._watches:
            listed = ", ".join(self._describe(w) for w in self._watches.values())
            log.info("%d watch(es): %s", len(self._watches), listed)

    async def add(self, spec: WatchSpec) -> WatchInfo:
        """Register a watch (stored first, with a store). Raises :class:`BadRequest` (invalid),
        :class:`TooManyWatches`, :class:`Busy` (the store's writer is swamped; retry)."""
        problems = check(spec)
        if problems:
            raise BadRequest("invalid watch: " + "; ".join(problems))
        on_stream = sum(1 for w in self._watches.values() if w.spec.stream == spec.stream)
        if on_stream >= MAX_WATCHES_PER_STREAM:
            raise TooManyWatches(f"stream {spec.stream!r} has {on_stream} watches, the most a stream may have")
        if len(self._watches) >= MAX_WATCHES:
            raise TooManyWatches(f"the server has {len(self._watches)} watches, the most it may have")
        if self.store is None:
            watch_id = next(self._ids)
        else:
            watch_id = await self._stored(lambda store: store.add_watch(_record(0, spec)))
        w = self._register(watch_id, spec, None)
        info = self.info(w)
        self._publish(WatchStatus(spec.stream, w.id, info))
        return info

    async def remove(self, watch_id: int) -> WatchInfo:
        """Unregister a watch (its events stay in the timeline). Raises :class:`UnknownWatch`."""
        w = self._watches.get(watch_id)
        if w is None:
            raise UnknownWatch(f"no watch {watch_id}")
        if self.store is not None:
            await self._stored(lambda store: store.remove_watch(watch_id))
        self._watches.pop(watch_id, None)
        self.background.forget(watch_id)
        info = self.info(w)
        self._publish(WatchStatus(w.spec.stream, w.id, None))
        return info

    def get(self, watch_id: int) -> Watch | None:
        return self._watches.get(watch_id)

    def of_stream(self, stream: str) -> list[Watch]:
        return [w for w in self._watches.values() if w.spec.stream == stream]

    def infos(self, streams: Iterable[str] | None = None) -> list[WatchInfo]:
        wanted = None if streams is None else set(streams)
        return [self.info(w) for w in self._watches.values() if wanted is None or w.spec.stream in wanted]

    def info(self, w: Watch) -> WatchInfo:
        s = w.spec
        return WatchInfo(
            id=w.id,
            stream=s.stream,
            condition=s.condition,
            every_s=s.every_s,
            min_duration_s=s.min_duration_s,
            cooldown_s=s.cooldown_s,
            threshold=s.threshold,
            describe=s.describe,
            webhook=redact(s.webhook),
            origin=s.origin,
            state=w.detector.state,
            score=None if w.score is None else round(w.score, 4),
            evaluated=self._iso(w.evaluated_at),
            evaluated_stream_time=w.evaluated_stream_time,
            evaluations=w.evaluations,
            dropped=w.dropped,
            errors=w.errors,
            alerts=w.alerts,
            error=w.error,
        )

    def _register(self, watch_id: int, spec: WatchSpec, last_alert: float | None) -> Watch:
        w = Watch(
            watch_id,
            spec,
            Detector(spec.threshold, spec.min_duration_s, spec.cooldown_s, last_alert=last_alert),
            Schedule(spec.every_s),
        )
        self._watches[watch_id] = w
        return w

    def _replace(self, w: Watch, spec: WatchSpec) -> None:
        w.spec = spec
        w.detector = Detector(spec.threshold, spec.min_duration_s, spec.cooldown_s, last_alert=w.detector.last_alert)
        w.schedule = Schedule(spec.every_s)

    async def _persist_update(self, watch_id: int, spec: WatchSpec) -> None:
        if self.store is not None:
            await self._stored(lambda store: store.update_watch(_record(watch_id, spec)))

    async def _stored(self, write: Callable[[EventStore], Future[int]]) -> int:
        """A watch change committed by the store's writer: :class:`Busy` when its queue is full,
        :class:`Internal` when the write fails."""
        assert self.store is not None
        try:
            future = write(self.store)
        except queue.Full:
            raise Busy("the event store is busy; try again in a moment") from None
        try:
            return await asyncio.wrap_future(future)
        except (sqlite3.Error, OSError) as exc:
            raise Internal(f"storing the watch failed: {exc}") from None

    # --- scheduling ----------------------------------------------------------------------------------
    def ingested(self, stream: str, t: float) -> None:
        """Stream ``stream``'s memory now reaches stream time ``t``: watches (and its caption) whose period
        has passed come due."""
        for w in self._watches.values():
            if w.spec.stream == stream and w.schedule.due(t) and not self.background.due(w.id):
                w.dropped += 1
                self._observer.evaluation_dropped(stream)
        every = self._captions.every_s.get(stream)
        if every is not None:
            schedule = self._captions.schedules.get(stream)
            if schedule is None:  # the first caption covers the first period, not the first frame
                schedule = self._captions.schedules[stream] = Schedule(every)
                schedule.next_due = t + every
            elif schedule.due(t):
                self._queue(Generation("caption", stream, CAPTION))

    def due_now(self, watch_id: int) -> None:
        """Evaluate a watch at the next chance (a new watch on a stream with video)."""
        if watch_id in self._watches and not self.background.due(watch_id):
            self._watches[watch_id].dropped += 1

    def _queue(self, job: Generation) -> None:
        dropped = self.background.add(job)
        if dropped is not None:
            log.warning("stream %s: a %s was dropped (too many waiting)", dropped.stream, dropped.kind)

    # --- results -------------------------------------------------------------------------------------
    def evaluated(self, watch_id: int, result: Evaluation | BaseException, cost_s: float) -> None:
        """An evaluation of ``watch_id`` ended (a result, or why it failed)."""
        w = self._watches.get(watch_id)
        if w is None:  # removed meanwhile
            return
        stream = w.spec.stream
        if isinstance(result, BaseException):
            w.errors += 1
            first = w.error is None
            w.error = getattr(result, "message", None) or f"evaluation failed: {type(result).__name__}"
            if first:
                log.warning("watch %d on %s: %s", w.id, stream, w.error)
            self._observer.evaluation_finished(stream, cost_s, ok=False)
            return
        self._observer.evaluation_finished(stream, cost_s, ok=True)
        w.evaluations += 1
        w.error = None
        w.score = result.score
        w.evaluated_at = self._clock()
        w.evaluated_stream_time = result.stream_time
        before = w.detector.state
        change = w.detector.observe(result.score, result.stream_time)
        log.debug("watch %d on %s: P(yes)=%.3f at %.1f s -> %s", w.id, stream, result.score, result.stream_time, change)
        if change == "fire":
            self._fire(w, result)
        elif change == "end" and w.open_event is not None:
            ended_at = result.wall if result.wall is not None else self._clock()
            event = self._recent.get(w.open_event)
            if self.store is not None:
                self.store.update_event(w.open_event, ended=(ended_at, result.stream_time))
            if event is not None:
                event = replace(event, ended=self._iso(ended_at), ended_stream_time=result.stream_time)
                self._remember(event)
                self._publish(AlertUpdate(event))
            w.open_event = None
        if w.detector.state != before:
            self._publish(WatchStatus(stream, w.id, self.info(w)))

    def _fire(self, w: Watch, result: Evaluation) -> None:
        at = result.wall if result.wall is not None else self._clock()
        event_id = self.store.new_id() if self.store is not None else next(self._memory_event_ids)
        record = EventRecord(
            id=event_id,
            kind="alert",
            stream=w.spec.stream,
            watch=w.id,
            condition=w.spec.condition,
            at=at,
            stream_time=result.stream_time,
            ended_at=None,
            ended_stream_time=None,
            score=round(result.score, 4),
            text=None,
            snapshot=result.image is not None,
        )
        if self.store is not None:
            if not self.store.put_event(record, result.image):
                record = replace(record, snapshot=False)
        else:
            record = replace(record, snapshot=False)  # nowhere to keep one
        w.alerts += 1
        w.open_event = event_id
        event = self.timeline(record)
        self._remember(event)
        log.info(
            "watch %d on %s fired at %.1f s (P(yes)=%.2f): %s",
            w.id,
            w.spec.stream,
            result.stream_time,
            result.score,
            w.spec.condition,
        )
        self._observer.alert_fired(w.spec.stream)
        self._publish(Alert(event))
        if w.spec.describe:
            prompt = DESCRIBE.format(condition=w.spec.condition.strip().rstrip(".?!"))
            self._queue(Generation("describe", w.spec.stream, prompt, event=event_id, watch=w.id))

    def generated(self, job: Generation, result: Generated) -> None:
        """A description or caption is ready."""
        text = one_sentence(result.text)
        if not text:
            return
        if job.kind == "describe" and job.event is not None:
            if self.store is not None:
                self.store.update_event(job.event, text=text)
            event = self._recent.get(job.event)
            if event is not None:
                event = replace(event, text=text)
                self._remember(event)
                self._publish(AlertUpdate(event))
            return
        at = result.wall if result.wall is not None else self._clock()
        event_id = self.store.new_id() if self.store is not None else next(self._memory_event_ids)
        record = EventRecord(
            event_id, "caption", job.stream, None, None, at, result.stream_time, None, None, None, text, False
        )
        if self.store is not None and self.store.put_event(record, result.image):
            record = replace(record, snapshot=result.image is not None)
        self._remember(self.timeline(record))

    # --- the timeline --------------------------------------------------------------------------------
    async def query(self, q: EventQuery) -> list[TimelineEvent]:
        """Stored events matching ``q``, newest first (without a store: the recent ones in memory)."""
        if self.store is None:
            found = [e for e in reversed(self._recent.values()) if _matches(e, q)]
            return found[: q.limit]
        records = await asyncio.to_thread(_read_events, self.store, q)
        return [self.timeline(r) for r in records]

    async def snapshot(self, event: int, streams: frozenset[str] | None, wait_s: float = 2.0) -> bytes | None:
        """The JPEG of ``event`` if it has one and its stream is among ``streams`` (None: any); an event
        still being written is waited for (at most ``wait_s``)."""
        if self.store is None:
            return None
        return await asyncio.to_thread(_read_snapshot, self.store, event, streams, wait_s)

    def timeline(self, r: EventRecord) -> TimelineEvent:
        return TimelineEvent(
            id=r.id,
            kind=r.kind,
            stream=r.stream,
            watch=r.watch,
            condition=r.condition,
            time=self._iso(r.at) or "",
            stream_time=r.stream_time,
            ended=self._iso(r.ended_at),
            ended_stream_time=r.ended_stream_time,
            score=r.score,
            text=r.text,
            snapshot=r.snapshot,
        )

    def _remember(self, event: TimelineEvent) -> None:
        self._recent[event.id] = event
        self._recent.move_to_end(event.id)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    def _iso(self, t: float | None) -> str | None:
        return None if t is None else datetime.fromtimestamp(t, self._tz).isoformat(timespec="milliseconds")

    @staticmethod
    def _describe(w: Watch) -> str:
        return f"{w.id} on {w.spec.stream} every {w.spec.every_s:g} s: {w.spec.condition!r}"


def one_sentence(text: str) -> str:
    """The first sentence of a generated text, trimmed (at most :data:`MAX_TEXT_CHARS`)."""
    text = " ".join(text.split())
    m = re.search(r"(?<=[.!?])\s", text)
    if m is not None:
        text = text[: m.start()]
    return text[:MAX_TEXT_CHARS].strip()


def redact(url: str | None) -> str | None:
    """A webhook URL as it may be shown: scheme, host, port and path (no credentials, query or fragment)."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _spec(rec: WatchRecord) -> WatchSpec:
    origin: Origin = "config" if rec.origin == "config" else "api"
    return WatchSpec(
        rec.stream,
        rec.condition,
        rec.every_s,
        rec.min_duration_s,
        rec.cooldown_s,
        rec.threshold,
        rec.describe,
        rec.webhook,
        origin,
    )


def _record(watch_id: int, s: WatchSpec) -> WatchRecord:
    return WatchRecord(
        watch_id,
        s.stream,
        s.condition,
        s.every_s,
        s.min_duration_s,
        s.cooldown_s,
        s.threshold,
        s.describe,
        s.webhook,
        s.origin,
    )


def _matches(e: TimelineEvent, q: EventQuery) -> bool:
    if q.streams is not None and e.stream not in q.streams:
        return False
    if (q.watch is not None and e.watch != q.watch) or (q.kind is not None and e.kind != q.kind):
        return False
    at = datetime.fromisoformat(e.time).timestamp()
    if (q.since is not None and at < q.since) or (q.until is not None and at > q.until):
        return False
    if q.text is not None:
        words = {w.lower() for w in re.findall(r"\w+", f"{e.condition or ''} {e.text or ''}")}
        return all(any(x.startswith(w.lower()) for x in words) for w in re.findall(r"\w+", q.text))
    return True


def _read_watches(store: EventStore) -> tuple[list[WatchRecord], dict[int, float]]:
    with store.reader() as reader:
        return reader.watches(), reader.last_alerts()


def _read_events(store: EventStore, q: EventQuery) -> list[EventRecord]:
    with store.reader() as reader:
        return reader.events(q)


def _read_snapshot(store: EventStore, event: int, streams: frozenset[str] | None, wait_s: float) -> bytes | None:
    store.wait_written(event, wait_s)
    with store.reader() as reader:
        record = reader.event(event)
        if record is None or not record.snapshot or (streams is not None and record.stream not in streams):
            return None
        return reader.snapshot(event)
