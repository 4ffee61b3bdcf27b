"""The engine: streams, their memories, and the one inference worker that serves them all.

Data flow (see docs/design.md): each source's frames go to its stream's pending slot (newest wins, drops
counted); the worker takes the pending frames of all streams as one batch, and the inference thread
encodes them, adds them to each stream's memory and extends that stream's cached prefix; questions wait
in one bounded queue, served round robin across the connections that asked them
(:mod:`engine.questions`), and are answered on the cached prefix, their events delivered as they come.
Watches (:mod:`engine.watching`) are evaluated on the same worker between those steps, never more than one
ahead of a waiting question (:mod:`engine.schedule`); their alerts go to the streams' subscribers.

Ownership is split by thread. The event loop owns the :class:`~engine.streams.LiveStream` objects
(sources, pending slots, states, subscriptions) and the question queue; the inference thread owns
:class:`~engine.inference.Inference` (the model, memories, prefixes). They meet only through the
single-worker executor: the loop submits work, the thread returns frozen results.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone, tzinfo
from typing import TypeVar

from engine.answering import Answering, Ask, GuidedMode, Progress
from engine.budget import fit_budget, recall_reserve
from engine.events import (
    FINAL,
    Answered,
    Cancelled,
    Failed,
    QuestionEvent,
    Reply,
    StatusListener,
    StreamInfo,
    StreamStatus,
    TimelineEvent,
    Timing,
    Token,
    WatchInfo,
)
from engine.inference import Generated, Inference, Ingest
from engine.observer import EngineObserver, NoObserver, Work
from engine.questions import FairQueue
from engine.recall import AUTO, RecallRequest
from engine.schedule import Background, Generation
from engine.sessions import SessionStore
from engine.streams import LiveStream
from engine.subscriptions import Subscriptions
from engine.watches import DESCRIBE_TOKENS, WatchSpec
from engine.watching import Watching
from errors import (
    BadRequest,
    Busy,
    Conflict,
    Internal,
    LivesightError,
    NoVideo,
    ShuttingDown,
    UnknownStream,
)
from models.adapter import ModelAdapter, SupportsGuided, SupportsYesNo, Turn
from store.archive import Archive
from store.events import EventQuery, EventStore
from stream.frame import Frame
from stream.source import Source
from stream.spec import SourceSpec

log = logging.getLogger("livesight.engine")

#: Builds a new, unstarted source for a spec at a sampling rate (frames per second of stream time).
SourceFactory = Callable[[SourceSpec, float], Source]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    fps: float = 1.0
    budget: int | None = None  # in-context visual tokens per stream; None: the model's default
    max_queue: int = 16  # questions waiting, all clients together
    max_streams: int = 16
    #: seconds a stream that ended for good (a publisher that left, a file that finished, a source that
    #: failed) stays listed before it is removed; None keeps it until someone removes it
    ended_ttl_s: float | None = 300.0
    #: where live streams' clock times are read (time labels, recall, ISO times); None: the machine's zone
    timezone: tzinfo | None = None
    #: visual tokens of archived clips a question may recall; None: a quarter of the budget, at most 512
    #: (with an archive; without one nothing can be recalled)
    recall_tokens: int | None = None
    #: answers under way at once, stepped together one token at a time (batched where the model can);
    #: further questions wait in the fair queue
    max_active: int = 4
    #: streams captioned every so many seconds of stream time: (name, seconds) pairs
    captions: tuple[tuple[str, float], ...] = ()


@dataclass(eq=False)
class Question:
    """One ``ask``: answered in arrival order, its events delivered to ``reply`` (on the event loop)."""

    id: str
    stream: str
    text: str
    max_new_tokens: int
    session: str | None
    reply: Reply
    received: float  # clock time the request arrived
    cancel: threading.Event = field(default_factory=threading.Event)
    #: answer with a fresh prefill that drops visual tokens inside the model (models/guided.py);
    #: None: on the cached prefix
    guided: GuidedMode | None = None
    #: who asked (a connection) and from where (its client address): questions are served round robin
    #: across groups, and across the owners within a group (engine/questions.py)
    owner: Hashable = None
    group: Hashable = None
    #: archived clips to recall for it (engine/recall.py); the default lets the question decide
    recall: RecallRequest = AUTO
    #: show the newest frame in detail; also when the question asks about fine detail (see wants_detail)
    detail: bool = False
    #: the earlier turns of the conversation, given by the asker; None: the session store's for ``session``
    turns: tuple[Turn, ...] | None = None
    #: its number in arrival order, given when it is queued (the scheduler's barrier reads it)
    seq: int = 0


class Engine:
    """Owns the streams, the question queue and the inference worker; ``close()`` stops all of them."""

    def __init__(
        self,
        adapter: ModelAdapter,
        settings: EngineSettings,
        make_source: SourceFactory,
        *,
        clock: Callable[[], float] = time.time,
        sessions: SessionStore | None = None,
        archive: Archive | None = None,
        observer: EngineObserver | None = None,
        events: EventStore | None = None,
    ) -> None:
        self.adapter = adapter
        self.settings = settings
        self.timezone = settings.timezone or datetime.now().astimezone().tzinfo or timezone.utc
        self.archive = archive
        recall = settings.recall_tokens if archive is not None else 0
        probe = fit_budget(adapter, settings.budget)  # without recall: how big is the default?
        self.recall_tokens = min(512, probe.budget // 4) if recall is None else recall
        memory_settings = fit_budget(adapter, settings.budget, extra=recall_reserve(self.recall_tokens, probe, adapter))
        self.budget = memory_settings.budget
        self.memory_settings = memory_settings
        self._make_source = make_source
        self._clock = clock
        self.sessions = sessions or SessionStore(archive=archive)
        self.observer: EngineObserver = observer or NoObserver()
        self.subscriptions = Subscriptions()
        self._streams: dict[str, LiveStream] = {}
        self._keys = itertools.count()
        self._questions: FairQueue[Question] = FairQueue(settings.max_queue)
        self._wake = asyncio.Event()
        self._closing = False
        # The inference thread: the only one that touches the model, the memories and the prefixes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._inference = Inference(
            adapter,
            memory_settings,
            archive=archive,
            recall_tokens=self.recall_tokens,
            timezone=self.timezone,
            clock=clock,
        )
        self._worker: asyncio.Task[None] | None = None
        self._active: list[_Active] = []  # answers under way, stepped together
        self._idle = asyncio.Event()  # set whenever no answer is under way
        self._idle.set()
        # Watches: evaluations, descriptions and captions share the worker (engine/schedule.py).
        self.background = Background()
        self.watching = Watching(
            background=self.background,
            publish=self.subscriptions.publish,
            observer=self.observer,
            store=events,
            clock=clock,
            timezone=self.timezone,
            captions=dict(settings.captions),
        )
        self._seqs = itertools.count(1)
        self._last_seq = 0  # the newest question number given out

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, specs: Sequence[SourceSpec], watches: Sequence[WatchSpec] = ()) -> None:
        """Bring back conversations and watches (``watches``: the configuration file's), start the worker
        and the streams."""
        await self.watching.load(watches)
        if self.archive is not None:
            n = await asyncio.to_thread(self._load_sessions, self.archive)
            if n:
                log.info("%d conversation(s) brought back from the archive", n)
        self._worker = asyncio.create_task(self._work(), name="inference-worker")
        for spec in specs:
            self.add_stream(spec)

    def _load_sessions(self, archive: Archive) -> int:
        reader = archive.reader()
        try:
            return self.sessions.load(reader)
        finally:
            reader.close()

    async def shutdown(self) -> None:
        """Stop taking questions and tell every asker why: waiting questions and the one being answered
        end with :class:`ShuttingDown` (retryable) before anything closes. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for q in self._questions.clear():
            q.cancel.set()
            q.reply(Failed(q.id, ShuttingDown("the server is shutting down; ask again when it is back")))
        for a in self._active:
            a.answering.ask.cancel.set()  # each stops at its next step (a question's sends the ShuttingDown)
        if self._active:
            await self._idle.wait()

    async def close(self) -> None:
        await self.shutdown()
        for name in list(self._streams):
            await self.remove_stream(name)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._inference.close)
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def add_stream(self, spec: SourceSpec) -> None:
        """Start reading ``spec``. Raises :class:`Conflict` for a name in use, :class:`Busy` when the
        stream cap is reached."""
        self._check_new(spec.name)
        fps = spec.fps or self.settings.fps
        self._attach(spec, self._make_source(spec, fps), fps)

    def add_source(self, spec: SourceSpec, source: Source) -> None:
        """Add a stream whose source was built elsewhere (a WebRTC publisher); the engine owns it from
        now on and closes it when the stream is removed. Raises like :meth:`add_stream`."""
        self._check_new(spec.name)
        self._attach(spec, source, spec.fps or self.settings.fps)

    def _check_new(self, name: str) -> None:
        if name in self._streams:
            raise Conflict(f"a stream named {name!r} already exists")
        if len(self._streams) >= self.settings.max_streams:
            raise Busy(f"at most {self.settings.max_streams} streams")

    def _attach(self, spec: SourceSpec, source: Source, fps: float) -> None:
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        stream = LiveStream(next(self._keys), spec, source, fps)
        self._streams[spec.name] = stream
        loop = asyncio.get_running_loop()
        # Sources change state in their own threads; hop to the loop before telling subscribers.
        source.stats.watch(lambda _state: _call_soon(loop, self._state_changed, stream))
        stream.task = asyncio.create_task(self._feed(stream), name=f"stream:{spec.name}")
        log.info("stream %s: %s", spec.name, spec.display_url)
        self._state_changed(stream)

    async def _feed(self, stream: LiveStream) -> None:
        if self.archive is not None:
            # The stream's memory is rebuilt from its archived clips before its first frame (after a
            # restart the context comes back), on the inference thread that owns memories.
            prepare = functools.partial(self._inference.prepare, stream.key, stream.name)
            stream.memory = await asyncio.get_running_loop().run_in_executor(self._executor, prepare)
        try:
            await stream.feed(self._wake)
        finally:
            self._state_changed(stream)
        # The source has ended for good: keep the stream listed (its state and memory can still be asked
        # about) for a while, then free it.
        ttl = self.settings.ended_ttl_s
        if ttl is not None:
            await asyncio.sleep(ttl)
            if self._streams.get(stream.name) is stream:
                log.info("stream %s: removed %.0f s after it ended", stream.name, ttl)
                await self.remove_stream(stream.name)

    async def remove_stream(self, name: str) -> None:
        stream = self._streams.pop(name, None)
        if stream is None:
            raise UnknownStream(f"no stream named {name!r}")
        stream.source.stats.watch(None)
        self.subscriptions.publish(StreamStatus(name, None))
        task = stream.task
        if task is not None and task is not asyncio.current_task():  # an expired stream removes itself
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await stream.source.close()
        self.background.drop_stream(name)
        # Its memory lives on the inference thread: freed there, after whatever runs now.
        self._executor.submit(self._inference.drop, stream.key)

    # --- questions -----------------------------------------------------------------------------
    def submit(self, q: Question) -> None:
        """Queue a question. Raises :class:`UnknownStream`, :class:`NoVideo` (the stream has no frame in
        memory yet; retry), :class:`BadRequest` (guided answers on a model without them), :class:`Busy`
        (the queue is full and this owner holds as many waiting questions as anyone; retry) or
        :class:`ShuttingDown`. A question of an owner holding fewer may push out the heaviest owner's
        newest one, which then ends with :class:`Busy` (see :mod:`engine.questions`)."""
        try:
            self._enqueue(q)
        except LivesightError as exc:
            self.observer.question_finished(Failed(q.id, exc))
            raise

    def _enqueue(self, q: Question) -> None:
        if self._closing:
            raise ShuttingDown("the server is shutting down; ask again when it is back")
        stream = self._streams.get(q.stream)
        if stream is None:
            raise UnknownStream(f"no stream named {q.stream!r}; streams: {', '.join(self._streams) or 'none'}")
        if stream.memory is None or stream.memory.stats.frames == 0:
            raise NoVideo(f"stream {q.stream!r} has no video in memory yet ({stream.state.value}); ask again soon")
        if q.guided is not None and not isinstance(self.adapter, SupportsGuided):
            raise BadRequest(f"{self.adapter.model_id} does not support guided answers")
        q.reply = _observed(q.reply, self.observer)
        q.seq = self._last_seq = next(self._seqs)
        out = self._questions.push(q)
        if out is q:
            raise Busy(f"{len(self._questions)} questions are waiting; ask again in a moment")
        if out is not None:
            out.cancel.set()
            out.reply(Failed(out.id, Busy("the queue is full and your connection holds the most questions")))
        self._wake.set()

    def cancel(self, q: Question) -> None:
        """Stop ``q``: dropped from the queue at once, or stopped within one token if it is running.
        The question's owner receives :class:`Cancelled` either way."""
        q.cancel.set()
        if self._questions.remove(q):
            q.reply(Cancelled(q.id))

    # --- answering: begun, stepped and finished between other work ----------------------------------
    async def _begin(self, q: Question) -> None:
        """Start answering ``q`` (one prefill on the inference thread); its first piece goes out at once."""
        stream = self._streams.get(q.stream)
        if stream is None:
            q.reply(Failed(q.id, UnknownStream(f"stream {q.stream!r} was removed")))
            return
        started = self._clock()
        turns: tuple[Turn, ...] = q.turns if q.turns is not None else self.sessions.turns(q.stream, q.session)
        ask = Ask(
            key=stream.key,
            stream=q.stream,
            question=q.text,
            turns=turns,
            max_new_tokens=q.max_new_tokens,
            cancel=q.cancel,
            guided=q.guided,
            recall=q.recall,
            detail=q.detail or wants_detail(q.text),
        )
        try:
            answering, progress = await self._run(self._inference.begin, ask)
        except LivesightError as exc:
            q.reply(Failed(q.id, exc))
            return
        except Exception:
            log.exception("question %s on stream %s failed", q.id, q.stream)
            q.reply(Failed(q.id, Internal("answering failed; see the server log")))
            return
        active = _Active(q, answering, started)
        self._active.append(active)
        self._idle.clear()
        self._progress(active, progress)

    async def _step(self) -> None:
        """Move every active answer one token on (one batched step on the inference thread)."""
        active = list(self._active)
        try:
            progress = await self._run(self._inference.step, [a.answering for a in active])
        except Exception:
            log.exception("a decoding step of %d answer(s) failed", len(active))
            for a in active:
                self._done(a)
                if a.q is not None:
                    a.q.reply(Failed(a.q.id, Internal("answering failed; see the server log")))
            return
        for a, p in zip(active, progress, strict=True):
            self._progress(a, p)

    def _progress(self, a: _Active, p: Progress) -> None:
        q = a.q
        if q is None:
            self._made(a, p)
            return
        if p.piece:
            if a.first is None:
                a.first = self._clock()
            q.reply(Token(q.id, p.piece))
        if not p.done:
            return
        self._done(a)
        if p.cancelled or q.cancel.is_set():
            if self._closing:
                q.reply(Failed(q.id, ShuttingDown("the server is shutting down; ask again when it is back")))
            else:
                q.reply(Cancelled(q.id))
            return
        assert p.context is not None
        done = self._clock()
        self.sessions.record(q.stream, q.session, Turn(q.text, p.text))
        timing = Timing(
            queue_ms=round((a.started - q.received) * 1000, 1),
            ttft_ms=round(((a.first or done) - q.received) * 1000, 1),
            total_ms=round((done - q.received) * 1000, 1),
        )
        q.reply(Answered(q.id, p.text, p.context, timing))

    def _made(self, a: _Active, p: Progress) -> None:
        """A description's or caption's progress: nothing goes out until it is done."""
        if not p.done:
            return
        self._done(a)
        job, shot = a.job, a.shot
        assert job is not None and shot is not None
        if p.cancelled or job.cancel.is_set():
            if not self._closing:
                self.background.put_back(job)
                self._wake.set()
            return
        self.watching.generated(job, replace(shot, text=p.text))

    def _done(self, a: _Active) -> None:
        self._active.remove(a)
        if not self._active:
            self._idle.set()

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on the inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    # --- the worker ----------------------------------------------------------------------------
    async def _work(self) -> None:
        """Round robin over the kinds of work, one unit each:

        1. a due watch evaluation (one short prefill), unless a waiting question has already seen one
           start: ``Background.evaluation_ready`` compares the waiting questions' numbers with the barrier
           set after the last evaluation, so a question waits behind at most one evaluation;
        2. start one waiting question when fewer than ``max_active`` answers are under way, or when a
           client address with no answer under way has one waiting (up to ``2 * max_active`` in all: one
           address's long answers never make another wait for a place); when no question waits, a
           description or caption takes a free place instead (and gives it back, cancelled and put back
           in line, when a question arrives to find every place taken);
        3. ingest one batch of frames;
        4. move every active answer, description and caption one token on.

        No unit is longer than a prefill or a batch, so no answer holds the cameras or the other answers
        for more than one step."""
        while True:
            self._wake.clear()
            evaluate = self.background.evaluation_ready(q.seq for q in self._questions)
            room = len(self._active) < self.settings.max_active
            if self._questions and not room:
                self._yield_place()
            # An address with nothing under way is not kept waiting by others' long answers: it may take
            # a place beyond max_active (up to twice as many in all).
            newcomer = (
                not room
                and len(self._active) < 2 * self.settings.max_active
                and self._questions.has_group(self._nothing_under_way)
            )
            admit = bool(self._questions) and (room or newcomer)
            describe = not self._questions and room and self.background.generations_waiting > 0
            frames = any(s.pending is not None for s in self._streams.values())
            if not (evaluate or admit or describe or frames or self._active):
                await self._wake.wait()
                continue
            if evaluate:
                await self._unit("evaluate", self._evaluate(self.background.next_evaluation()))
                self.background.evaluated(self._last_seq)
            if admit:
                q = self._questions.pop() if room else self._questions.pop(self._nothing_under_way)
                await self._unit("answer", self._begin(q), f"question {q.id}")
            elif describe:
                job = self.background.next_generation()
                if job is not None:
                    await self._unit("describe", self._describe(job), f"a {job.kind} of {job.stream}")
            if frames:
                await self._unit("ingest", self._ingest(), "ingesting a batch")
            if self._active:
                await self._unit("answer", self._step(), "a decoding step")

    def _nothing_under_way(self, group: Hashable) -> bool:
        """Whether no answer of client address ``group`` is under way."""
        return all(a.q is None or a.q.group != group for a in self._active)

    def _yield_place(self) -> None:
        """A description or caption gives its place to a waiting question: cancelled (it ends at its next
        step) and made again later."""
        for a in self._active:
            if a.job is not None and not a.job.cancel.is_set():
                a.job.cancel.set()
                return

    async def _unit(self, work: Work, step: Awaitable[None], what: str | None = None) -> None:
        """Run one unit of work, telling the observer; the worker outlives any unit's failure."""
        self.observer.worker_busy(work)
        try:
            await step
        except Exception:
            log.exception("%s failed", what or work)
        finally:
            self.observer.worker_idle()

    async def _ingest(self) -> None:
        batch: list[tuple[LiveStream, Frame]] = []
        for stream in self._streams.values():
            frame = stream.take()
            if frame is not None:
                batch.append((stream, frame))
        keyed = [Ingest(stream.key, stream.name, frame, stream.source.wall_clock) for stream, frame in batch]
        snapshots = await asyncio.get_running_loop().run_in_executor(self._executor, self._inference.ingest, keyed)
        now = self._clock()
        for stream, frame in batch:
            before = stream.memory.ingested if stream.memory else 0
            stream.memory = snapshots.get(stream.key, stream.memory)
            if stream.memory is not None and stream.memory.ingested > before:
                self.observer.frame_ingested(stream.name, now - frame.captured_at)
                if stream.memory.stats.end is not None and self._streams.get(stream.name) is stream:
                    self.watching.ingested(stream.name, stream.memory.stats.end)

    async def _evaluate(self, watch_id: int) -> None:
        """Evaluate one watch on its stream's cached prefix and hand the result to the watches."""
        w = self.watching.get(watch_id)
        stream = None if w is None else self._streams.get(w.spec.stream)
        if w is None or stream is None or stream.memory is None or stream.memory.stats.frames == 0:
            return  # removed, or no video (yet): nothing to read
        run = functools.partial(self._inference.evaluate, stream.key, stream.name, w.question)
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except Exception as exc:
            if not isinstance(exc, LivesightError):
                log.exception("watch %d on %s: evaluation failed", watch_id, stream.name)
            self.watching.evaluated(watch_id, exc, time.perf_counter() - started)
            return
        self.watching.evaluated(watch_id, result, time.perf_counter() - started)

    async def _describe(self, job: Generation) -> None:
        """Begin an alert's description or a stream's caption: stepped with the answers, its text handed to
        the watches when done. Cancelled (for a user's question, see :meth:`_enqueue`), it is put back to
        be made again later."""
        stream = self._streams.get(job.stream)
        if stream is None or stream.memory is None or stream.memory.stats.frames == 0:
            return
        try:
            answering, progress, shot = await self._run(
                self._inference.begin_description, stream.key, stream.name, job.prompt, DESCRIBE_TOKENS, job.cancel
            )
        except LivesightError as exc:
            log.warning("%s of %s: %s", job.kind, job.stream, exc.message)
            return
        active = _Active(None, answering, self._clock(), job=job, shot=shot)
        self._active.append(active)
        self._idle.clear()
        self._progress(active, progress)

    # --- watches and the timeline --------------------------------------------------------------
    async def add_watch(self, spec: WatchSpec) -> WatchInfo:
        """Watch ``spec.stream`` for ``spec.condition``. Raises :class:`UnknownStream`, :class:`BadRequest`
        (an invalid watch, or a model that cannot read yes/no), :class:`TooManyWatches`, :class:`Busy`."""
        if spec.stream not in self._streams:
            raise UnknownStream(f"no stream named {spec.stream!r}; streams: {', '.join(self._streams) or 'none'}")
        if not isinstance(self.adapter, SupportsYesNo):
            raise BadRequest(f"{self.adapter.model_id} cannot evaluate watches")
        info = await self.watching.add(spec)
        stream = self._streams.get(spec.stream)
        if stream is not None and stream.memory is not None and stream.memory.stats.frames > 0:
            self.watching.due_now(info.id)  # a first reading now, not a period from now
            self._wake.set()
        return info

    async def remove_watch(self, watch_id: int) -> WatchInfo:
        """Stop a watch (its events stay). Raises :class:`UnknownWatch`."""
        return await self.watching.remove(watch_id)

    def watches(self, streams: Sequence[str] | None = None) -> list[WatchInfo]:
        """The watches (of ``streams`` only, when given)."""
        return self.watching.infos(streams)

    async def events(self, query: EventQuery) -> list[TimelineEvent]:
        """Timeline entries matching ``query``, newest first."""
        return await self.watching.query(query)

    async def snapshot(self, event: int, streams: frozenset[str] | None = None) -> bytes | None:
        """The JPEG of an event (None: no such event, none kept, or its stream is not in ``streams``)."""
        return await self.watching.snapshot(event, streams)

    @property
    def keeps_events(self) -> bool:
        """Whether events are stored (an event store: ``--data``)."""
        return self.watching.store is not None

    def listen(self, listener: StatusListener) -> None:
        """Hear every stream's events (alerts for webhooks), on the event loop; must not block."""
        self.subscriptions.add_all(listener)

    def unlisten(self, listener: StatusListener) -> None:
        self.subscriptions.remove_all(listener)

    # --- status --------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        return list(self._streams)

    def source(self, name: str) -> Source | None:
        stream = self._streams.get(name)
        return None if stream is None else stream.source

    async def latest_frame(self, name: str) -> Frame | None:
        """The newest frame stream ``name``'s source delivered (None: none yet), whether or not the model
        has taken it; event loop only. Raises :class:`UnknownStream`."""
        stream = self._streams.get(name)
        if stream is None:
            raise UnknownStream(f"no stream named {name!r}")
        return stream.latest

    def streams_info(self) -> list[StreamInfo]:
        return [self._info(stream) for stream in self._streams.values()]

    def stream_info(self, name: str) -> StreamInfo:
        stream = self._streams.get(name)
        if stream is None:
            raise UnknownStream(f"no stream named {name!r}; streams: {', '.join(self._streams) or 'none'}")
        return self._info(stream)

    def _info(self, stream: LiveStream) -> StreamInfo:
        archived = None if self.archive is None else self.archive.summary(stream.name)
        return stream.info(self._clock(), self.timezone, archived)

    # --- status pushes -------------------------------------------------------------------------
    def subscribe(self, name: str, listener: StatusListener) -> None:
        """Send a :class:`StreamStatus` to ``listener`` now and on every state change of stream ``name``."""
        info = self.stream_info(name)
        self.subscriptions.add(name, listener)
        listener(StreamStatus(name, info))

    def unsubscribe(self, name: str, listener: StatusListener) -> None:
        self.subscriptions.remove(name, listener)

    def _state_changed(self, stream: LiveStream) -> None:
        """Tell subscribers if the stream's state differs from what they were last told (event loop)."""
        if self._streams.get(stream.name) is not stream or stream.state.value == stream.published:
            return
        stream.published = stream.state.value
        log.debug("stream %s: %s", stream.name, stream.published)
        self.subscriptions.publish(StreamStatus(stream.name, self._info(stream)))

    @property
    def queued(self) -> int:
        return len(self._questions)


_T = TypeVar("_T")


@dataclass(eq=False)
class _Active:
    """A question being answered, or a description or caption being made (``job``; ``shot`` the frame it
    is made on), event loop side: the answer itself lives on the inference thread."""

    q: Question | None
    answering: Answering
    started: float
    first: float | None = None
    job: Generation | None = None
    shot: Generated | None = None


#: Words that ask about what a frame shows in detail: text to read, small things, a closer look.
_DETAIL = re.compile(
    r"\b(read|reads|text|written|writing|say|says|sign|label|plate|number|digits?|detail|details|zoom|closer|"
    r"closely|small|tiny|fine print)\b",
    re.IGNORECASE,
)


def wants_detail(question: str) -> bool:
    """Whether a question asks about fine detail, so the newest frame is shown at high resolution."""
    return _DETAIL.search(question) is not None


def _observed(reply: Reply, observer: EngineObserver) -> Reply:
    """``reply``, telling ``observer`` of the question's final event too."""

    def observed(ev: QuestionEvent) -> None:
        if isinstance(ev, FINAL):
            observer.question_finished(ev)
        reply(ev)

    return observed


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[LiveStream], None], stream: LiveStream) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(fn, stream)
