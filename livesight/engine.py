"""The engine: streams, their memories, and the one inference worker that serves them all.

Data flow (see docs/design.md): each source's frames go to a per-stream pending slot (newest wins, drops
counted); the worker takes the pending frames of all streams as one batch, encodes them, adds them to
each stream's memory and extends that stream's cached prefix; questions wait in one bounded FIFO and are
answered on the cached prefix, tokens streamed back as they come. The model, the memories and the
prefixes are touched only from the single inference thread; the event loop only moves references.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from livesight.errors import BadRequest, Busy, ConfigError, LivesightError, UnknownStream
from livesight.sessions import SessionStore
from livesight.subscriptions import Subscriptions
from memory import HiCoMemory, HiCoSettings, HiCoStats, TierStats
from models.adapter import ModelAdapter, Prefix, Turn
from models.guided import GuidedAnswerer, GuidedSettings
from stream.frame import Frame
from stream.source import Source, SourceState
from stream.spec import SourceSpec

log = logging.getLogger("livesight.engine")

#: Delivers one protocol message (a JSON-ready dict) to whoever asked; called on the event loop.
Deliver = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    fps: float = 1.0
    budget: int | None = None  # in-context visual tokens per stream; None: the model's default
    realtime: bool = True  # pace files and the demo at real time; False: as fast as the model ingests
    max_queue: int = 16  # questions waiting, all clients together
    max_streams: int = 16


@dataclass(eq=False)
class Question:
    """One ``ask``: answered in arrival order, tokens delivered as they are generated."""

    id: str
    stream: str
    text: str
    max_new_tokens: int
    session: str | None
    deliver: Deliver
    received: float  # clock time the request arrived
    cancel: threading.Event = field(default_factory=threading.Event)
    #: "uniform" or "attention": answer with a fresh prefill that drops visual tokens inside the model
    #: (models/guided.py); None: on the cached prefix
    guided: str | None = None


@dataclass(eq=False)
class StreamRuntime:
    spec: SourceSpec
    source: Source
    memory: HiCoMemory
    lossless: bool
    prefix: Prefix | None = None  # inference thread only
    pending: Frame | None = None
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0  # frames replaced in the pending slot before the worker took them
    ingested: int = 0
    mem_stats: HiCoStats | None = None  # published by the inference thread after each change
    last_captured_at: float | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = None
    published: str | None = None  # the last state pushed to subscribers

    @property
    def state(self) -> SourceState:
        return SourceState.OFFLINE if self.error is not None else self.source.stats.state


class Engine:
    """Owns the streams, the question queue and the inference worker; ``close()`` stops all of them."""

    def __init__(
        self,
        adapter: ModelAdapter,
        settings: EngineSettings,
        make_source: Callable[[SourceSpec, float, bool], Source],
        *,
        clock: Callable[[], float] = time.time,
        sessions: SessionStore | None = None,
    ) -> None:
        self.adapter = adapter
        self.settings = settings
        self.budget = settings.budget or adapter.default_budget
        try:
            self.memory_settings = HiCoSettings.fit(self.budget, adapter.tokens_per_frame)
        except ValueError as exc:
            raise ConfigError(f"{exc} (model {adapter.model_id}; raise --budget)") from None
        self._make_source = make_source
        self._clock = clock
        self.sessions = sessions or SessionStore()
        self.subscriptions = Subscriptions()
        self._streams: dict[str, StreamRuntime] = {}
        self._questions: deque[Question] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None
        self._current: Question | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, specs: Sequence[SourceSpec]) -> None:
        self._worker = asyncio.create_task(self._work(), name="inference-worker")
        for spec in specs:
            self.add_stream(spec)

    async def close(self) -> None:
        for name in list(self._streams):
            await self.remove_stream(name)
        for q in self._questions:
            q.cancel.set()
        self._questions.clear()
        if self._current is not None:
            self._current.cancel.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def add_stream(self, spec: SourceSpec) -> None:
        self._check_new(spec.name)
        lossless = not self.settings.realtime and spec.kind in ("file", "demo")
        self._attach(spec, self._make_source(spec, spec.fps or self.settings.fps, not lossless), lossless)

    def add_source(self, spec: SourceSpec, source: Source) -> None:
        """Add a stream whose source was built elsewhere (a WebRTC publisher); the engine owns it from
        now on and closes it when the stream is removed. Raises like :meth:`add_stream`."""
        self._check_new(spec.name)
        self._attach(spec, source, lossless=False)

    def _check_new(self, name: str) -> None:
        if name in self._streams:
            raise BadRequest(f"a stream named {name!r} already exists")
        if len(self._streams) >= self.settings.max_streams:
            raise Busy(f"at most {self.settings.max_streams} streams")

    def _attach(self, spec: SourceSpec, source: Source, lossless: bool) -> None:
        rt = StreamRuntime(spec, source, HiCoMemory(self.memory_settings), lossless)
        self._streams[spec.name] = rt
        loop = asyncio.get_running_loop()
        # Sources change state in their own threads; hop to the loop before telling subscribers.
        source.stats.watch(lambda _state: _call_soon(loop, self._state_changed, rt))
        rt.task = asyncio.create_task(self._run_stream(rt), name=f"stream:{spec.name}")
        log.info("stream %s: %s", spec.name, spec.display_url)
        self._state_changed(rt)

    async def remove_stream(self, name: str) -> None:
        rt = self._streams.pop(name, None)
        if rt is None:
            raise UnknownStream(f"no stream named {name!r}")
        rt.source.stats.watch(None)
        self.subscriptions.publish(name, {"type": "status", "stream": name, "state": "removed"})
        if rt.task is not None:
            rt.task.cancel()
            await asyncio.gather(rt.task, return_exceptions=True)
        await rt.source.close()

    # --- frames --------------------------------------------------------------------------------
    async def _run_stream(self, rt: StreamRuntime) -> None:
        try:
            async for frame in rt.source:
                if rt.lossless:
                    while rt.pending is not None:
                        rt.taken.clear()
                        await rt.taken.wait()
                elif rt.pending is not None:
                    rt.dropped += 1
                rt.pending = frame
                self._wake.set()
            log.info("stream %s: %s", rt.spec.name, rt.source.stats.state.value)
        except LivesightError as exc:
            rt.error = exc.message
            log.warning("stream %s: offline: %s", rt.spec.name, exc.message)
        except Exception:  # a bug in a source: this stream goes offline, the others go on
            rt.error = "internal error in the source; see the server log"
            log.exception("stream %s: source failed", rt.spec.name)
        finally:
            await rt.source.close()
            self._state_changed(rt)

    def _take_frames(self) -> list[tuple[StreamRuntime, Frame]]:
        batch = []
        for rt in self._streams.values():
            if rt.pending is not None:
                batch.append((rt, rt.pending))
                rt.pending = None
                rt.taken.set()
        return batch

    def _ingest_blocking(self, batch: list[tuple[StreamRuntime, Frame]]) -> None:
        encoded = self.adapter.encode([frame.image for _, frame in batch])
        for i, (rt, frame) in enumerate(batch):
            extras = {k: v[i] for k, v in encoded.extras.items()}
            try:
                rt.memory.add_frame(encoded.tokens[i], frame.pts, extras)
                self._sync_prefix(rt)
            except Exception:
                # Only this stream's frame is lost; the others in the batch go on. The prefix is rebuilt
                # from memory on next use, whatever state the failure left it in.
                log.exception("stream %s: adding frame %d failed", rt.spec.name, frame.index)
                rt.dropped += 1
                rt.prefix = None
                continue
            rt.ingested += 1
            rt.last_captured_at = frame.captured_at
            rt.mem_stats = rt.memory.stats()

    def _sync_prefix(self, rt: StreamRuntime) -> Prefix:
        """Bring the stream's cached prefix up to its memory: append new segments, and re-prefill from
        the first segment that changed (re-compression, eviction). Runs right after each ingest, so a
        question finds the prefix current and waits for at most one frame's update."""
        # Taken out while it is updated: if the update fails, the next call rebuilds from scratch.
        prefix, rt.prefix = rt.prefix, None
        rt.prefix = self.adapter.update_prefix(prefix, rt.memory.segments())
        return rt.prefix

    # --- questions -----------------------------------------------------------------------------
    def submit(self, q: Question) -> None:
        """Queue a question; raises :class:`UnknownStream` or :class:`Busy` (retry later)."""
        if q.stream not in self._streams:
            raise UnknownStream(f"no stream named {q.stream!r}; streams: {', '.join(self._streams) or 'none'}")
        if q.guided is not None and not hasattr(self.adapter, "language_model"):
            raise BadRequest(f"{self.adapter.model_id} does not support guided answers")
        if len(self._questions) >= self.settings.max_queue:
            raise Busy(f"{len(self._questions)} questions are waiting; ask again in a moment")
        self._questions.append(q)
        self._wake.set()

    def cancel(self, q: Question) -> None:
        """Stop ``q``: dropped from the queue at once, or stopped within one token if it is running.
        The question's owner receives ``cancelled`` either way."""
        q.cancel.set()
        if q in self._questions:
            self._questions.remove(q)
            q.deliver({"type": "cancelled", "id": q.id})

    async def _answer(self, q: Question) -> None:
        loop = asyncio.get_running_loop()
        rt = self._streams.get(q.stream)
        if rt is None:
            q.deliver(_error(q.id, UnknownStream(f"stream {q.stream!r} was removed")))
            return
        started = self._clock()
        turns = self.sessions.turns(q.stream, q.session)

        def run() -> tuple[str, float | None, dict[str, Any]]:
            prefix = self._sync_prefix(rt)
            first: float | None = None
            parts: list[str] = []
            if q.guided is None:
                pieces = self.adapter.generate(prefix, turns, q.text, q.max_new_tokens, q.cancel)
            else:
                guided = GuidedAnswerer(self.adapter, GuidedSettings.for_depth(q.guided, self._depth()))  # type: ignore[arg-type]
                pieces = guided.generate(rt.memory.segments(), turns, q.text, q.max_new_tokens, q.cancel)
            for piece in pieces:
                if first is None:
                    first = self._clock()
                parts.append(piece)
                loop.call_soon_threadsafe(q.deliver, {"type": "token", "id": q.id, "text": piece})
            return "".join(parts), first, {**_context(prefix), "guided": q.guided}

        self._current = q
        try:
            text, first, context = await loop.run_in_executor(self._executor, run)
        except LivesightError as exc:
            q.deliver(_error(q.id, exc))
            return
        except Exception:
            log.exception("question %s on stream %s failed", q.id, q.stream)
            rt.prefix = None  # rebuilt on next use: never answer on a cache a failure may have left behind
            q.deliver(
                {"type": "error", "id": q.id, "code": "internal", "message": "answering failed; see the server log"}
            )
            return
        finally:
            self._current = None
        if q.cancel.is_set():
            q.deliver({"type": "cancelled", "id": q.id})
            return
        done = self._clock()
        self.sessions.record(q.stream, q.session, Turn(q.text, text))
        q.deliver(
            {
                "type": "answer",
                "id": q.id,
                "text": text,
                "context": context,
                "timing": {
                    "queue_ms": round((started - q.received) * 1000, 1),
                    "ttft_ms": round(((first or done) - q.received) * 1000, 1),
                    "total_ms": round((done - q.received) * 1000, 1),
                },
            }
        )

    def _depth(self) -> int:
        decoder, _ = self.adapter.language_model()  # type: ignore[attr-defined]
        return len(decoder.layers)

    # --- the worker ----------------------------------------------------------------------------
    async def _work(self) -> None:
        """Alternate between answering and ingesting when both wait, so neither starves the other."""
        loop = asyncio.get_running_loop()
        prefer_question = True
        while True:
            self._wake.clear()
            has_frames = any(rt.pending is not None for rt in self._streams.values())
            if not self._questions and not has_frames:
                await self._wake.wait()
                continue
            if self._questions and (prefer_question or not has_frames):
                q = self._questions.popleft()
                try:
                    await self._answer(q)
                except Exception:  # the worker must outlive any one question
                    log.exception("question %s failed outside the model", q.id)
            else:
                batch = self._take_frames()
                try:
                    await loop.run_in_executor(self._executor, self._ingest_blocking, batch)
                except Exception:
                    # The frames are lost (counted as dropped); the stream and the worker go on.
                    log.exception("encoding %d frame(s) failed", len(batch))
                    for rt, _ in batch:
                        rt.dropped += 1
                # Idle waits must not keep the last batch (a removed stream's memory) alive.
                del batch
            prefer_question = not prefer_question

    # --- status --------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        return list(self._streams)

    def source(self, name: str) -> Source | None:
        rt = self._streams.get(name)
        return None if rt is None else rt.source

    def streams_info(self) -> list[dict[str, Any]]:
        now = self._clock()
        out = []
        for rt in self._streams.values():
            stats = rt.mem_stats
            out.append(
                {
                    "name": rt.spec.name,
                    "source": rt.spec.display_url,
                    "state": rt.state.value,
                    "fps": rt.spec.fps or self.settings.fps,
                    "frames": rt.ingested,
                    "dropped": rt.dropped + rt.source.stats.dropped,
                    "reconnects": rt.source.stats.reconnects,
                    "memory_tokens": stats.tokens if stats else 0,
                    "memory_frames": stats.frames if stats else 0,
                    "memory_span": [stats.start, stats.end] if stats and stats.start is not None else None,
                    "memory_tiers": [_tier(t) for t in stats.tiers] if stats else [],
                    "long_term": stats.long_term if stats else 0,
                    "last_frame_age_s": None if rt.last_captured_at is None else round(now - rt.last_captured_at, 3),
                    "error": rt.error or rt.source.stats.error,
                }
            )
        return out

    # --- status pushes -------------------------------------------------------------------------
    def subscribe(self, name: str, deliver: Deliver) -> None:
        """Push a ``status`` message to ``deliver`` now and on every state change of stream ``name``."""
        rt = self._streams.get(name)
        if rt is None:
            raise UnknownStream(f"no stream named {name!r}; streams: {', '.join(self._streams) or 'none'}")
        self.subscriptions.add(name, deliver)
        deliver(self._status(rt))

    def unsubscribe(self, name: str, deliver: Deliver) -> None:
        self.subscriptions.remove(name, deliver)

    def _status(self, rt: StreamRuntime) -> dict[str, Any]:
        info = next(i for i in self.streams_info() if i["name"] == rt.spec.name)
        return {"type": "status", "stream": info.pop("name"), **info}

    def _state_changed(self, rt: StreamRuntime) -> None:
        """Tell subscribers if the stream's state differs from what they were last told (event loop)."""
        if self._streams.get(rt.spec.name) is not rt or rt.state.value == rt.published:
            return
        rt.published = rt.state.value
        log.debug("stream %s: %s", rt.spec.name, rt.published)
        self.subscriptions.publish(rt.spec.name, self._status(rt))

    @property
    def queued(self) -> int:
        return len(self._questions)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[StreamRuntime], None], rt: StreamRuntime) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(fn, rt)


def _context(prefix: Prefix) -> dict[str, Any]:
    return {
        "start": prefix.start,
        "end": prefix.end,
        "frames": prefix.frames,
        "tokens": prefix.length,
        "visual_tokens": prefix.visual_tokens,
    }


def _tier(t: TierStats) -> dict[str, Any]:
    """One memory tier for ``streams``: tier 0 is the recent native frames, 1 the clips, 2.. older."""
    span = [t.start, t.end] if t.start is not None else None
    return {
        "tier": t.tier,
        "tokens_per_frame": t.tokens_per_frame,
        "tokens": t.tokens,
        "frames": t.frames,
        "span": span,
    }


def _error(qid: str | None, exc: LivesightError) -> dict[str, Any]:
    return {"type": "error", "id": qid, "code": exc.code, "message": exc.message, "retryable": exc.retryable}
