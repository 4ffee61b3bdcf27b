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
            raise ConfigError(str(exc)) from None
        self._make_source = make_source
        self._clock = clock
        self.sessions = sessions or SessionStore()
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
        self._executor.shutdown(wait=True)

    def add_stream(self, spec: SourceSpec) -> None:
        if spec.name in self._streams:
            raise BadRequest(f"a stream named {spec.name!r} already exists")
        if len(self._streams) >= self.settings.max_streams:
            raise Busy(f"at most {self.settings.max_streams} streams")
        lossless = not self.settings.realtime and spec.kind in ("file", "demo")
        source = self._make_source(spec, self.settings.fps, not lossless)
        rt = StreamRuntime(spec, source, HiCoMemory(self.memory_settings), lossless)
        self._streams[spec.name] = rt
        rt.task = asyncio.create_task(self._run_stream(rt), name=f"stream:{spec.name}")
        log.info("stream %s: %s", spec.name, spec.display_url)

    async def remove_stream(self, name: str) -> None:
        rt = self._streams.pop(name, None)
        if rt is None:
            raise UnknownStream(f"no stream named {name!r}")
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
        finally:
            await rt.source.close()

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
            rt.memory.add_frame(encoded.tokens[i], frame.pts, extras)
            self._sync_prefix(rt)
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
                await self._answer(self._questions.popleft())
            else:
                batch = self._take_frames()
                try:
                    await loop.run_in_executor(self._executor, self._ingest_blocking, batch)
                except Exception:
                    # The frames are lost (counted as dropped); the stream and the worker go on.
                    log.exception("encoding %d frame(s) failed", len(batch))
                    for rt, _ in batch:
                        rt.dropped += 1
            prefer_question = not prefer_question

    # --- status --------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        return list(self._streams)

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
                    "fps": self.settings.fps,
                    "frames": rt.ingested,
                    "dropped": rt.dropped + rt.source.stats.dropped,
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

    @property
    def queued(self) -> int:
        return len(self._questions)


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
