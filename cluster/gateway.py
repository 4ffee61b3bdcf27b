"""The gateway: the engine ``web/`` talks to under ``serve --ray``, forwarding to shard actors.

It meets :class:`~engine.api.EngineAPI`, so websockets, WHIP, the OpenAI-compatible API and /metrics work
unchanged in the serving process, and it holds no model. What it keeps:

- the placement map (:class:`~cluster.placement.Placement`): which shard holds which stream, and each
  stream's spec; new streams go to the least loaded shard, :meth:`Gateway.move` moves one;
- each stream's latest :class:`~engine.events.StreamInfo`, from the shards' reports (at once on a state
  change, else every ``report_s`` seconds), which answers ``streams``, ``status``, /healthz and /metrics
  without a round trip;
- the subscriptions (status pushes to clients), and the questions under way with the shard answering them;
- the sources of WHIP publishers: their WebRTC connections end here, and each sampled frame is pushed to
  the stream's shard (:mod:`cluster.relay`).

Everything crosses with Ray's own means: actor calls, and streaming generators for the answers (one per
question, its events as they come) and for each shard's reports. Errors travel as the engine's typed
errors inside its events.

When a shard dies, its report stream fails: the gateway tells its streams' subscribers ``reconnecting``
(their last known memory kept in the status) and ends the answers that shard was giving with a retryable
:class:`~errors.ShardUnavailable`, while Ray restarts the actor (``max_restarts``); once it is back, the
gateway opens it with the streams the map gives it, which rebuild their memories from the archive and go
``live``. Client connections stay up throughout: they are held here, not by the shard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from datetime import datetime, timezone, tzinfo
from typing import Any, TypeVar

# Read when Ray is imported: without it Ray's core catches SIGTERM in this process (a normal stop, on which
# serve shuts down cleanly) as a crash, logs a stack trace and may abort before serve has closed anything.
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from cluster.messages import Asked, Hello, Report
from cluster.placement import Placement
from cluster.shard import Shard
from engine.build import EngineRecipe
from engine.engine import EngineSettings, Question
from engine.events import (
    FINAL,
    Failed,
    QuestionEvent,
    Reply,
    StatusListener,
    StreamInfo,
    StreamStatus,
    TimelineEvent,
    WatchInfo,
)
from engine.observer import EngineObserver, NoObserver
from engine.subscriptions import Subscriptions
from engine.watches import WatchSpec
from errors import (
    BadRequest,
    ConfigError,
    Internal,
    LivesightError,
    ShardUnavailable,
    ShuttingDown,
    SourceError,
    UnknownStream,
)
from store.events import EventQuery
from stream.frame import Frame
from stream.source import Source
from stream.spec import SourceSpec

log = logging.getLogger("livesight.gateway")

#: Seconds a shard reports even when nothing changed (the freshness of ``streams`` and /metrics).
REPORT_S = 0.5
#: Seconds between two attempts to reach a shard Ray is restarting (doubling up to the cap).
RETRY_S, RETRY_MAX_S = 0.1, 2.0
#: Seconds a shard has to answer a call on shutdown before it is killed.
SHUTDOWN_S = 10.0

#: Why watches, their events and captions are refused under --ray (typed: BadRequest, not retryable).
NO_WATCHES = "watches are not available with --ray yet"

#: A Ray actor handle of :class:`~cluster.shard.Shard` (Ray's handles are not typed).
ShardHandle = Any
_T = TypeVar("_T")


@dataclasses.dataclass(eq=False)
class _Link:
    """The gateway's side of one shard."""

    index: int
    actor: ShardHandle
    up: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set while it serves
    hello: Hello | None = None
    queued: int = 0
    lost_at: float | None = None  # monotonic time it was lost, until its streams are live again
    restarts: int = 0
    watcher: asyncio.Task[None] | None = None


@dataclasses.dataclass(eq=False)
class _Asking:
    """A question under way on a shard."""

    ticket: str
    link: _Link
    task: asyncio.Task[None] | None = None


class Gateway:
    """See the module doc. :meth:`start` opens the shards; :meth:`close` stops them (and Ray, if ours)."""

    def __init__(
        self,
        recipe: EngineRecipe,
        make_actor: Callable[[int], ShardHandle],
        shards: int,
        *,
        observer: EngineObserver | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.timezone: tzinfo = recipe.settings.timezone or datetime.now().astimezone().tzinfo or timezone.utc
        self.observer: EngineObserver = observer or NoObserver()
        self.subscriptions = Subscriptions()
        #: seconds from each shard's loss to all its streams live again (newest last; for logs and benchmarks)
        self.restart_times: list[float] = []
        self._make_actor = make_actor
        self._on_close = on_close
        self._links = [_Link(i, make_actor(i)) for i in range(shards)]
        self._placement = Placement(shards, recipe.settings.max_streams)
        self._specs: dict[str, SourceSpec] = {}
        self._infos: dict[str, StreamInfo] = {}
        self._local: dict[str, Source] = {}  # WHIP publishers' sources, which live here
        self._leaving: set[tuple[int, str]] = set()  # removals the gateway asked a shard for
        self._asking: dict[Question, _Asking] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # stream starts, relays of WHIP frames
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------------------
    async def start(self, specs: Sequence[SourceSpec]) -> None:
        """Place ``specs`` on the shards and open them all (each loads its model). Raises the first
        shard's :class:`LivesightError` (a model that cannot load, an archive that cannot open)."""
        for spec in specs:
            self._place(spec)
        hellos = await asyncio.gather(*(self._open(link) for link in self._links))
        for link, hello in zip(self._links, hellos, strict=True):
            self._opened(link, hello)
            link.watcher = asyncio.create_task(self._watch(link), name=f"shard-watch:{link.index}")
            link.watcher.add_done_callback(_log_failure)

    def describe(self) -> str:
        first = next((link.hello for link in self._links if link.hello is not None), None)
        model = f"model {first.model_id}, budget {first.budget} tokens per stream" if first else "no shard up"
        shards = "; ".join(
            f"shard {link.index} (pid {link.hello.pid if link.hello else '?'}): "
            + ", ".join(self._placement.on(link.index))
            for link in self._links
        )
        return f"{model}; {len(self._links)} shard(s): {shards}"

    async def shutdown(self) -> None:
        """Stop taking questions; the shards end theirs with :class:`ShuttingDown`, which reaches the
        askers before this returns (at most ``SHUTDOWN_S`` seconds). Idempotent."""
        if self._closing:
            return
        self._closing = True
        up = [link for link in self._links if link.up.is_set()]
        await self._each(up, lambda link: link.actor.shutdown.remote(), "shutdown")
        tasks = [a.task for a in self._asking.values() if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_S)

    async def close(self) -> None:
        await self.shutdown()
        watchers = [link.watcher for link in self._links if link.watcher is not None]
        owned = [*watchers, *self._tasks, *(a.task for a in self._asking.values() if a.task is not None)]
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
        for source in list(self._local.values()):
            await source.close()
        self._local.clear()
        up = [link for link in self._links if link.up.is_set()]
        await self._each(up, lambda link: link.actor.close.remote(), "close")
        for link in self._links:
            ray.kill(link.actor, no_restart=True)
        if self._on_close is not None:
            await asyncio.to_thread(self._on_close)

    async def _each(self, links: Sequence[_Link], call: Callable[[_Link], Awaitable[object]], what: str) -> None:
        async def one(link: _Link) -> None:
            try:
                await asyncio.wait_for(call(link), SHUTDOWN_S)
            except (asyncio.TimeoutError, RayActorError, RayTaskError) as exc:
                log.warning("shard %d: %s failed: %s", link.index, what, exc)

        await asyncio.gather(*(one(link) for link in links))

    # --- EngineAPI: state --------------------------------------------------------------------------
    @property
    def settings(self) -> EngineSettings:
        return self.recipe.settings

    @property
    def queued(self) -> int:
        return sum(link.queued for link in self._links)

    def stream_names(self) -> list[str]:
        return self._placement.names()

    def streams_info(self) -> list[StreamInfo]:
        return [self._info(name) for name in self._placement.names()]

    def stream_info(self, name: str) -> StreamInfo:
        if name not in self._placement:
            raise UnknownStream(f"no stream named {name!r}; streams: {', '.join(self.stream_names()) or 'none'}")
        return self._info(name)

    def source(self, name: str) -> Source | None:
        return self._local.get(name)

    async def latest_frame(self, name: str) -> Frame | None:
        """The newest frame of ``name``, from its shard (None while the shard is down: no picture yet).
        Raises :class:`UnknownStream`."""
        shard = self._placement.shard_of(name)
        if shard is None:
            raise UnknownStream(f"no stream named {name!r}; streams: {', '.join(self.stream_names()) or 'none'}")
        link = self._links[shard]
        if not link.up.is_set():
            return None
        try:
            return await self._call(link, link.actor.latest_frame.remote(name))
        except ShardUnavailable:
            return None

    def shard_of(self, name: str) -> int | None:
        """The index of the shard holding stream ``name``."""
        return self._placement.shard_of(name)

    def shard_pids(self) -> list[int | None]:
        """Each shard's process id as it last said (None: not up yet)."""
        return [link.hello.pid if link.hello else None for link in self._links]

    def _info(self, name: str) -> StreamInfo:
        info = self._infos.get(name)
        if info is None:  # not reported yet
            spec = self._specs[name]
            info = self._infos[name] = _placeholder(spec, spec.fps or self.settings.fps)
        return info

    # --- EngineAPI: streams --------------------------------------------------------------------------
    def add_stream(self, spec: SourceSpec) -> None:
        link = self._place(spec)
        self._spawn(self._start_stream(link, spec), f"add-stream:{spec.name}")

    def add_source(self, spec: SourceSpec, source: Source) -> None:
        link = self._place(spec)
        self._local[spec.name] = source
        self._spawn(self._relay_frames(link, spec, source), f"relay:{spec.name}")

    def _place(self, spec: SourceSpec) -> _Link:
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        down = [link.index for link in self._links if not link.up.is_set() and link.hello is not None]
        shard = self._placement.place(spec.name, queued=[link.queued for link in self._links], down=down)
        self._specs[spec.name] = spec
        self._infos.pop(spec.name, None)
        log.info("stream %s: %s, on shard %d", spec.name, spec.display_url, shard)
        return self._links[shard]

    async def _start_stream(self, link: _Link, spec: SourceSpec) -> None:
        """Start a newly placed stream on its shard; a shard that is down gets it when it is opened again."""
        if not link.up.is_set():
            return
        try:
            await self._call(link, link.actor.add_stream.remote(spec))
        except ShardUnavailable:
            pass  # its recovery opens it with the streams of the map, this one included
        except LivesightError as exc:
            self._offline(link, spec.name, exc.message)

    def _offline(self, link: _Link, name: str, why: str) -> None:
        """A stream its shard could not start: listed ``offline`` with the reason, until it is removed."""
        log.warning("stream %s: shard %d cannot start it: %s", name, link.index, why)
        if self._placement.shard_of(name) == link.index:
            info = dataclasses.replace(self._info(name), state="offline", error=why)
            self._infos[name] = info
            self.subscriptions.publish(StreamStatus(name, info))

    async def remove_stream(self, name: str) -> None:
        shard = self._placement.remove(name)
        del self._specs[name]
        self._infos.pop(name, None)
        self.subscriptions.publish(StreamStatus(name, None))
        source = self._local.pop(name, None)
        if source is not None:
            await source.close()  # its relay ends with it
        link = self._links[shard]
        if link.up.is_set():
            await self._stop_on(link, name)

    async def _stop_on(self, link: _Link, name: str) -> None:
        """Remove ``name`` from ``link``'s shard (the gateway has already forgotten or moved it)."""
        self._leaving.add((link.index, name))
        try:
            await self._call(link, link.actor.remove_stream.remote(name))
        except LivesightError as exc:  # gone already, or the shard is: a restarted shard does not get it
            self._leaving.discard((link.index, name))
            log.debug("stream %s: removing it from shard %d: %s", name, link.index, exc.message)

    async def move(self, name: str, shard: int) -> None:
        """Move stream ``name`` to shard ``shard``: stopped on its shard (its archived clips written), then
        started on the other, which rebuilds its memory from the shared archive. Subscribers see
        ``reconnecting``, then ``starting`` and ``live``; questions under way on the old shard end (ask
        again). Raises :class:`UnknownStream`, :class:`~errors.Busy` (that shard is full) and
        :class:`ShardUnavailable` (it is down)."""
        target = self._links[shard]
        if not target.up.is_set():
            raise ShardUnavailable(f"shard {shard} is not up")
        old = self._placement.move(name, shard)
        if old == shard:
            return
        log.info("stream %s: moving from shard %d to shard %d", name, old, shard)
        self._reconnecting(name)
        was = self._links[old]
        if was.up.is_set():
            await self._stop_on(was, name)
        spec = self._specs[name]
        if self._placement.shard_of(name) == shard:  # not removed or moved again meanwhile
            await self._start_stream(target, spec)

    # --- EngineAPI: questions ------------------------------------------------------------------------
    def submit(self, q: Question) -> None:
        try:
            link = self._ask_link(q)
        except LivesightError as exc:
            self.observer.question_finished(Failed(q.id, exc))
            raise
        q.reply = _observed(q.reply, self.observer)
        asked = Asked(
            ticket=secrets.token_hex(8),
            id=q.id,
            stream=q.stream,
            text=q.text,
            max_new_tokens=q.max_new_tokens,
            session=q.session,
            received=q.received,
            owner=_owner_key(q.owner),
            guided=q.guided,
            recall=q.recall,
            detail=q.detail,
            turns=q.turns,
        )
        asking = self._asking[q] = _Asking(asked.ticket, link)
        asking.task = asyncio.create_task(self._answer(q, link, asked), name=f"ask:{q.stream}:{asked.ticket}")

    def _ask_link(self, q: Question) -> _Link:
        if self._closing:
            raise ShuttingDown("the server is shutting down; ask again when it is back")
        shard = self._placement.shard_of(q.stream)
        if shard is None:
            raise UnknownStream(f"no stream named {q.stream!r}; streams: {', '.join(self.stream_names()) or 'none'}")
        link = self._links[shard]
        if not link.up.is_set():
            raise ShardUnavailable(f"stream {q.stream!r} is reconnecting (its shard restarts); ask again in a moment")
        return link

    async def _answer(self, q: Question, link: _Link, asked: Asked) -> None:
        """Relay one answer's events from the shard to the asker; the last one is always final."""
        try:
            async for ref in link.actor.ask.options(num_returns="streaming").remote(asked):
                ev: QuestionEvent = await ref
                q.reply(ev)
                if isinstance(ev, FINAL):
                    return
            q.reply(Failed(q.id, Internal("the shard ended an answer without its end; see its log")))
        except RayActorError:
            why = f"the shard answering about {q.stream!r} stopped; the stream is reconnecting: ask again in a moment"
            q.reply(Failed(q.id, ShardUnavailable(why)))
        except RayTaskError as exc:
            q.reply(Failed(q.id, _cause(exc)))
        except asyncio.CancelledError:
            q.reply(Failed(q.id, ShuttingDown("the server is shutting down; ask again when it is back")))
            link.actor.cancel.remote(asked.ticket)
            raise
        finally:
            self._asking.pop(q, None)

    def cancel(self, q: Question) -> None:
        q.cancel.set()
        asking = self._asking.get(q)
        if asking is not None and asking.link.up.is_set():
            # Answered by a Cancelled event through the answer's relay (or a Failed if the shard is lost).
            asking.link.actor.cancel.remote(asking.ticket)

    # --- EngineAPI: status pushes --------------------------------------------------------------------
    def subscribe(self, name: str, listener: StatusListener) -> None:
        info = self.stream_info(name)
        self.subscriptions.add(name, listener)
        listener(StreamStatus(name, info))

    def unsubscribe(self, name: str, listener: StatusListener) -> None:
        self.subscriptions.remove(name, listener)

    def listen(self, listener: StatusListener) -> None:
        self.subscriptions.add_all(listener)

    def unlisten(self, listener: StatusListener) -> None:
        self.subscriptions.remove_all(listener)

    # --- EngineAPI: watches (not forwarded to shards yet) --------------------------------------------
    async def add_watch(self, spec: WatchSpec) -> WatchInfo:
        raise BadRequest(NO_WATCHES)

    async def remove_watch(self, watch_id: int) -> WatchInfo:
        raise BadRequest(NO_WATCHES)

    def watches(self, streams: Sequence[str] | None = None) -> list[WatchInfo]:
        return []  # none can be added

    async def events(self, query: EventQuery) -> list[TimelineEvent]:
        raise BadRequest(NO_WATCHES)

    async def snapshot(self, event: int, streams: frozenset[str] | None = None) -> bytes | None:
        return None  # no event has one: there are no events

    @property
    def keeps_events(self) -> bool:
        return False

    # --- shards: reports, loss and recovery ----------------------------------------------------------
    async def _open(self, link: _Link) -> Hello:
        """Open ``link``'s shard with the streams the map gives it (again, until it holds all of them: a
        stream may be placed on it while it opens)."""
        while True:
            wanted = [self._specs[name] for name in self._placement.on(link.index)]
            hello: Hello = await self._call(link, link.actor.open.remote(wanted), translate=False)
            for name, why in hello.refused:
                self._offline(link, name, why)
            missing = set(self._placement.on(link.index)) - set(hello.streams) - {name for name, _ in hello.refused}
            if not missing:
                return hello

    def _opened(self, link: _Link, hello: Hello) -> None:
        link.hello = hello
        link.up.set()
        log.info("shard %d is up (pid %d on %s): %s", link.index, hello.pid, hello.node, ", ".join(hello.streams))
        # A WHIP publisher that left while its shard was down: its stream ends there too.
        for name, source in self._local.items():
            if self._placement.shard_of(name) == link.index and source.stats.state.value in ("ended", "offline"):
                link.actor.end_relay.remote(name, source.stats.state.value, source.stats.error)

    async def _watch(self, link: _Link) -> None:
        """Read the shard's reports for as long as the gateway runs; recover the shard when they fail."""
        while not self._closing:
            try:
                async for ref in link.actor.reports.options(num_returns="streaming").remote():
                    self._apply(link, await ref)
                why = "its reports ended"
            except RayActorError as exc:
                why = str(exc).splitlines()[0]
            except RayTaskError as exc:
                why = str(_cause(exc))
            if self._closing:
                return
            self._lost(link, why)
            await self._recover(link)

    def _lost(self, link: _Link, why: str) -> None:
        link.up.clear()
        link.queued = 0
        link.lost_at = time.monotonic()
        pid = link.hello.pid if link.hello else "?"
        names = self._placement.on(link.index)
        log.warning(
            "shard %d (pid %s) lost: %s; Ray restarts it, and its streams (%s) resume from the archive",
            link.index,
            pid,
            why,
            ", ".join(names) or "none",
        )
        for name in names:
            self._reconnecting(name)
        # The restarted shard will not report removals the old one had not reported yet.
        self._leaving = {(shard, name) for shard, name in self._leaving if shard != link.index}
        # Answers under way there end on their own: their streams fail like this one (ShardUnavailable).

    def _reconnecting(self, name: str) -> None:
        info = dataclasses.replace(self._info(name), state="reconnecting", last_frame_age_s=None)
        self._infos[name] = info
        self.subscriptions.publish(StreamStatus(name, info))

    async def _recover(self, link: _Link) -> None:
        """Open the shard again once Ray has restarted it; a shard Ray gave up on is replaced by a new one."""
        delay = RETRY_S
        while not self._closing:
            try:
                hello = await self._open(link)
                break
            except ActorDiedError as exc:  # no restart left (or its node is gone): a new actor in its place
                log.warning("shard %d is gone for good (%s); starting a new one", link.index, str(exc).splitlines()[0])
                link.actor = self._make_actor(link.index)
            except (RayActorError, LivesightError) as exc:  # still restarting, or failing to open: again
                log.debug("shard %d not back yet: %s", link.index, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        else:
            return
        link.restarts += 1
        self._opened(link, hello)

    def _apply(self, link: _Link, report: Report) -> None:
        """A shard's report: status changes to subscribers, the newest infos kept, lags to the observer."""
        link.queued = report.queued
        for ev in report.changes:
            if ev.info is None and (link.index, ev.stream) in self._leaving:
                self._leaving.discard((link.index, ev.stream))  # a removal the gateway asked for
                continue
            if self._placement.shard_of(ev.stream) != link.index:
                continue  # moved away or removed meanwhile
            if ev.info is None:  # the shard removed it itself (it ended long enough ago): forget it here too
                self._placement.remove(ev.stream)
                del self._specs[ev.stream]
                self._infos.pop(ev.stream, None)
                source = self._local.pop(ev.stream, None)
                if source is not None:
                    self._spawn(source.close(), f"close-source:{ev.stream}")
            else:
                self._infos[ev.stream] = ev.info
            self.subscriptions.publish(ev)
        for info in report.infos:
            if self._placement.shard_of(info.name) == link.index:
                self._infos[info.name] = info
        for stream, lag in report.lags:
            self.observer.frame_ingested(stream, lag)
        if link.lost_at is not None:
            names = self._placement.on(link.index)
            if all(self._info(n).state == "live" for n in names):
                took = time.monotonic() - link.lost_at
                link.lost_at = None
                self.restart_times.append(took)
                log.info("shard %d: its %d stream(s) live again %.1f s after it was lost", link.index, len(names), took)

    # --- WHIP publishers: frames pushed to the shard ------------------------------------------------
    async def _relay_frames(self, link: _Link, spec: SourceSpec, source: Source) -> None:
        """Start the stream on its shard, then push each frame of the local ``source`` to whichever shard
        holds the stream; frames that meet a shard restarting are dropped (newest wins anyway)."""
        await self._start_stream(link, spec)
        name = spec.name
        try:
            async for frame in source:
                shard = self._placement.shard_of(name)
                if shard is None:
                    return
                holder = self._links[shard]
                if not holder.up.is_set():
                    continue
                try:
                    await holder.actor.push.remote(name, frame)
                except (RayActorError, RayTaskError) as exc:  # lost, or not (yet) holding the stream
                    log.debug("stream %s: a frame was dropped on its way to shard %d: %s", name, shard, exc)
        except SourceError as exc:
            source.stats.error = exc.message
        shard = self._placement.shard_of(name)
        if shard is not None and self._links[shard].up.is_set() and self._local.get(name) is source:
            state = source.stats.state.value if source.stats.state.value in ("ended", "offline") else "ended"
            await self._links[shard].actor.end_relay.remote(name, state, source.stats.error)

    # --- helpers ---------------------------------------------------------------------------------------
    async def _call(self, link: _Link, ref: Awaitable[_T], *, translate: bool = True) -> _T:
        """Await a shard call; its typed error is raised as itself. ``translate``: a lost shard raises
        :class:`ShardUnavailable` (else Ray's own error, for recovery to tell restarting from gone)."""
        try:
            return await ref
        except RayTaskError as exc:
            raise _cause(exc) from None
        except RayActorError as exc:
            if not translate:
                raise
            raise ShardUnavailable(f"shard {link.index} is restarting; try again in a moment") from exc

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        _log_failure(task)


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A task of the gateway ended with a bug: said in the log, never lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())


def _cause(exc: RayTaskError) -> LivesightError:
    """The typed error a shard raised, or :class:`Internal` for anything else."""
    cause = exc.cause
    if isinstance(cause, LivesightError):
        return cause
    log.error("a shard failed: %s", exc)
    return Internal("a shard failed; see the server log")


def _owner_key(owner: Hashable) -> Hashable:
    """A picklable stand-in for a question's owner, equal for the same owner: values are kept, objects (a
    connection) become their identity."""
    if owner is None or isinstance(owner, (str, int, tuple)):
        return owner
    return f"{type(owner).__name__}:{id(owner)}"


def _observed(reply: Reply, observer: EngineObserver) -> Reply:
    def observed(ev: QuestionEvent) -> None:
        if isinstance(ev, FINAL):
            observer.question_finished(ev)
        reply(ev)

    return observed


def _placeholder(spec: SourceSpec, fps: float) -> StreamInfo:
    """A stream its shard has not reported yet."""
    return StreamInfo(
        name=spec.name,
        source=spec.display_url,
        state="starting",
        fps=fps,
        frames=0,
        dropped=0,
        reconnects=0,
        memory_tokens=0,
        memory_frames=0,
        memory_span=None,
        memory_tiers=(),
        long_term=0,
        last_frame_age_s=None,
        error=None,
    )


# --- opening: Ray, the shard actors, the gateway ------------------------------------------------------
async def open_gateway(
    recipe: EngineRecipe,
    specs: Sequence[SourceSpec],
    *,
    address: str,
    shards: int | None = None,
    observer: EngineObserver | None = None,
    max_restarts: int = -1,
) -> Gateway:
    """Join (or start, for ``address="local"``) a Ray cluster, start the shard actors and the gateway over
    them, and place ``specs``. Raises :class:`ConfigError` (no cluster there) and what a shard raises
    when it opens."""
    started = await asyncio.to_thread(_join, address, shards)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if recipe.device != "cpu" else 0
        n = shards or max(1, gpus)
        # One GPU per shard when the cluster has them, else one CPU (a "CPU slot"); Ray restarts a shard
        # whose process dies, as often as max_restarts allows (-1: always); calls are not retried (an
        # answer cut short fails with ShardUnavailable, and the asker asks again).
        actor_class = ray.remote(Shard).options(
            num_cpus=0 if gpus else 1,
            num_gpus=1 if gpus else 0,
            max_restarts=max_restarts,
            max_task_retries=0,
        )
        log.info(
            "ray: %s, %d CPU(s), %d GPU(s); %d shard(s) on %s",
            "started on this machine" if started else f"joined {address}",
            int(resources.get("CPU", 0)),
            int(resources.get("GPU", 0)),
            n,
            "a GPU each" if gpus else "a CPU each",
        )

        def make_actor(index: int) -> ShardHandle:
            return actor_class.remote(index, recipe, report_s=REPORT_S)

        gateway = Gateway(recipe, make_actor, n, observer=observer, on_close=ray.shutdown if started else None)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    try:
        await gateway.start(specs)
    except BaseException:
        await gateway.close()
        raise
    return gateway


def _join(address: str, shards: int | None) -> bool:
    """``ray.init`` for ``address``; True when it started a Ray instance of its own (``local``)."""
    if ray.is_initialized():
        raise ConfigError("Ray is already initialised in this process")
    try:
        if address == "local":
            # One machine, no dashboard, no usage statistics sent anywhere; a CPU for each shard at least.
            # (Ray's own servers listen on the machine's address, not only loopback: see docs/design.md.)
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read by the Ray processes this starts
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, shards or 1),
                include_dashboard=False,
                namespace="livesight",
            )
            return True
        ray.init(address=address, namespace="livesight")
        return False
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--ray {address}: cannot join a Ray cluster there: {exc}") from exc
