"""What the one inference thread owns: the model adapter, and each stream's memory and cached prefix.

Every method of :class:`Inference` blocks and is called only from the engine's single inference thread
(a one-worker executor), so none of this state needs a lock. Nothing here is read by the event loop:
what the loop needs comes back as return values — frozen :class:`MemorySnapshot` values after an ingest,
the text and context of an answer — and answer pieces go out through a callback the caller makes
thread-safe.

With an archive (``--data``), every clip a memory forms is handed to the archive's writer (with its recall
keys), a stream's memory is rebuilt from its archived clips the first time the stream is seen (after a
restart), and questions may recall archived clips (:mod:`engine.recall`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Literal

import numpy as np

from engine.events import AnswerContext, RecalledSpan
from engine.recall import AUTO, OFF, Recalled, Recaller, RecallRequest
from errors import BadRequest, LivesightError, NoVideo, TooLarge
from memory import HiCoMemory, HiCoSettings, HiCoStats, Segment
from models.adapter import (
    CountsUsage,
    ModelAdapter,
    Prefix,
    SupportsGuided,
    SupportsRecall,
    SupportsYesNo,
    Turn,
    Usage,
)
from models.guided import GuidedAnswerer, GuidedSettings
from store.archive import Archive, ArchiveReader
from stream.frame import Frame

log = logging.getLogger("livesight.engine")

#: How a guided answer picks the visual tokens it keeps (see :mod:`models.guided`).
GuidedMode = Literal["uniform", "attention"]


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """A stream's memory as the inference thread last left it, handed to the event loop."""

    stats: HiCoStats
    ingested: int  # frames added to memory
    failed: int  # frames the model could not add (they count as dropped)
    last_captured_at: float | None  # wall-clock capture time of the newest frame in memory
    restored_frames: int = 0  # frames the memory was rebuilt with from the archive (after a restart)


@dataclass(frozen=True, slots=True)
class Ingest:
    """One frame for the inference thread: whose it is, and whether its capture time is wall-clock."""

    key: int
    stream: str
    frame: Frame
    wall_clock: bool


@dataclass(frozen=True, slots=True)
class Ask:
    """What the inference thread needs to answer a question."""

    key: int
    stream: str
    question: str
    turns: tuple[Turn, ...]
    max_new_tokens: int
    cancel: threading.Event
    guided: GuidedMode | None = None
    recall: RecallRequest = AUTO
    detail: bool = False


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A watch's condition read on a stream's cached prefix: P(yes), and the frame it was read at."""

    score: float
    stream_time: float  # memory time of the newest frame in the prefix
    wall: float | None  # its wall-clock capture time (live streams)
    image: np.ndarray | None  # the newest frame, ``[H, W, 3]`` uint8 RGB (read-only): the snapshot


@dataclass(frozen=True, slots=True)
class Generated:
    """A short description made on a stream's cached prefix, and the frame it ends at."""

    text: str
    stream_time: float | None
    wall: float | None
    image: np.ndarray | None


@dataclass(eq=False)
class _StreamMemory:
    memory: HiCoMemory
    prefix: Prefix | None = None
    ingested: int = 0
    failed: int = 0
    last_captured_at: float | None = None
    last_image: np.ndarray | None = None  # the newest frame, for questions that want it in detail
    offset: float | None = None  # added to stream times after a restart, so time continues past the archive
    restored_frames: int = 0

    def snapshot(self) -> MemorySnapshot:
        stats = self.memory.stats()
        return MemorySnapshot(stats, self.ingested, self.failed, self.last_captured_at, self.restored_frames)


class Inference:
    """The model and every stream's memory and prefix, keyed by the engine's stream keys (inference thread
    only; see the module doc)."""

    def __init__(
        self,
        adapter: ModelAdapter,
        memory_settings: HiCoSettings,
        *,
        archive: Archive | None = None,
        recall_tokens: int = 0,
        timezone: tzinfo,
        clock: Callable[[], float],
    ) -> None:
        self.adapter = adapter
        self.memory_settings = memory_settings
        self.archive = archive
        self.recall_tokens = recall_tokens
        self.timezone = timezone
        self._clock = clock
        self._streams: dict[int, _StreamMemory] = {}
        self._reader: ArchiveReader | None = None  # opened on first use, in this thread
        self._recaller: Recaller | None = None

    def _stream(self, key: int, name: str | None = None) -> _StreamMemory:
        mem = self._streams.get(key)
        if mem is None:
            mem = self._streams[key] = _StreamMemory(HiCoMemory(self.memory_settings))
            if name is not None and self.archive is not None:
                self._restore(mem, name)
        return mem

    def _archive_reader(self) -> ArchiveReader:
        assert self.archive is not None
        if self._reader is None:
            self._reader = self.archive.reader()
        return self._reader

    # --- frames ----------------------------------------------------------------------------------
    def ingest(self, batch: Sequence[Ingest]) -> dict[int, MemorySnapshot]:
        """Encode one frame per stream in one batch, add each to its stream's memory and bring that
        stream's cached prefix up to date (so a question finds it current and waits for at most one
        frame's update). A failure loses only the frames it touched, counted in ``failed``."""
        try:
            encoded = self.adapter.encode([item.frame.image for item in batch])
        except Exception:
            log.exception("encoding %d frame(s) failed", len(batch))
            for item in batch:
                self._stream(item.key, item.stream).failed += 1
            return {item.key: self._stream(item.key).snapshot() for item in batch}
        for i, item in enumerate(batch):
            mem = self._stream(item.key, item.stream)
            frame = item.frame
            extras = {k: v[i] for k, v in encoded.extras.items()}
            try:
                if mem.offset is None:
                    # Time continues past what the memory holds (the archive's, after a restart).
                    last = mem.memory.stats().end
                    mem.offset = 0.0 if last is None or frame.pts > last else last - frame.pts + 1e-3
                wall = frame.captured_at if item.wall_clock else None
                clip = mem.memory.add_frame(encoded.tokens[i], frame.pts + mem.offset, extras, wall=wall)
                self._sync_prefix(mem)
            except Exception:
                # Only this stream's frame is lost; the others in the batch go on. The prefix is rebuilt
                # from memory on next use, whatever state the failure left it in.
                log.exception("stream %s: adding frame %d failed", item.stream, frame.index)
                mem.failed += 1
                mem.prefix = None
                continue
            mem.ingested += 1
            mem.last_captured_at = frame.captured_at
            mem.last_image = frame.image
            if clip is not None and self.archive is not None:
                self._archive(item.stream, clip)
        return {item.key: self._stream(item.key).snapshot() for item in batch}

    def _archive(self, stream: str, clip: Segment) -> None:
        """Hand a new clip (with its recall keys, when the model makes them) to the archive's writer."""
        assert self.archive is not None
        keys = None
        if isinstance(self.adapter, SupportsRecall):
            try:
                keys = self.adapter.recall_keys(clip)
            except Exception:  # the clip is still worth keeping without them
                log.exception("stream %s: recall keys for a clip failed", stream)
        self.archive.put_clip(stream, clip, keys)

    def _restore(self, mem: _StreamMemory, stream: str) -> None:
        """Rebuild a new memory from the stream's newest archived clips (as many as the memory holds at its
        fullest): after a restart the stream's context comes back, not just its archive."""
        reader = self._archive_reader()
        settings = self.memory_settings
        n = -(-settings.steady_frames() // settings.tiers[0].frames)
        infos = reader.clips(stream, newest=n)
        dtype = getattr(self.adapter, "dtype", None)
        for i, info in enumerate(infos):
            try:
                mem.memory.add_clip(reader.segment(info, id=i, dtype=dtype))
            except (KeyError, ValueError) as exc:  # gone meanwhile, or out of order: skip it
                log.warning("stream %s: archived clip at %.1f s not restored: %s", stream, info.start, exc)
                continue
            mem.restored_frames += info.frames
        if mem.restored_frames:
            log.info(
                "stream %s: memory rebuilt from %d archived clips (%d frames)", stream, len(infos), mem.restored_frames
            )

    def prepare(self, key: int, stream: str) -> MemorySnapshot:
        """Create the stream's memory now (rebuilt from the archive when it holds the stream's clips)."""
        return self._stream(key, stream).snapshot()

    def drop(self, key: int) -> None:
        """Forget a removed stream's memory and prefix."""
        self._streams.pop(key, None)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _sync_prefix(self, mem: _StreamMemory) -> Prefix:
        """Bring the cached prefix up to the memory: append new segments, re-prefill from the first segment
        that changed (re-compression, eviction)."""
        # Taken out while it is updated: if the update fails, the next call rebuilds from scratch.
        prefix, mem.prefix = mem.prefix, None
        mem.prefix = self.adapter.update_prefix(prefix, mem.memory.segments())
        return mem.prefix

    # --- questions -------------------------------------------------------------------------------
    def answer(self, ask: Ask, on_piece: Callable[[str], None]) -> tuple[str, AnswerContext]:
        """Answer ``ask``; every text piece goes to ``on_piece`` as it is made.

        On the cached prefix — after recalled clips and the newest frame in detail when there are any — or
        with a fresh question-guided prefill when ``guided`` is set. Returns the whole text and the context
        it was answered on. If the recalled clips and the detail do not fit the model's window they are left
        out (detail first). A failure drops the prefix (it is rebuilt on next use: never answer on a cache a
        failure may have left behind) and re-raises.
        """
        mem = self._stream(ask.key, ask.stream)
        if mem.memory.stats().frames == 0:
            raise NoVideo(f"stream {ask.stream!r} has no video in memory yet; ask again soon")
        try:
            prefix = self._sync_prefix(mem)
            recalled = Recalled((), "")
            usage: Usage | None = None
            if ask.guided is None:
                recalled = self._recall(ask, mem)
                detail = mem.last_image if ask.detail else None
                text, recalled, detail_used, usage = self._generate(prefix, ask, recalled, detail, on_piece)
            else:
                text = self._guided(ask, mem, on_piece)
                detail_used = False
        except LivesightError:
            raise  # a refusal (too large, unsupported): the prefix was restored and stays usable
        except Exception:
            mem.prefix = None
            raise
        context = self._context(prefix, ask, recalled, detail_used)
        if usage is not None:
            context = replace(context, prompt_tokens=usage.prompt, completion_tokens=usage.completion)
        return text, context

    # --- watches ---------------------------------------------------------------------------------
    def evaluate(self, key: int, stream: str, question: str) -> Evaluation:
        """P(yes) for the yes/no ``question`` on the stream's cached prefix (one short prefill, nothing
        generated, the prefix left as it was), with the newest frame. Raises :class:`NoVideo` before the
        first frame, :class:`BadRequest` for a model that cannot; a failure drops the prefix (rebuilt on
        next use) and re-raises."""
        adapter = self.adapter
        if not isinstance(adapter, SupportsYesNo):
            raise BadRequest(f"{adapter.model_id} cannot evaluate watches (no yes/no reading)")
        mem = self._stream(key, stream)
        if mem.memory.stats().frames == 0:
            raise NoVideo(f"stream {stream!r} has no video in memory yet")
        try:
            prefix = self._sync_prefix(mem)
            score = adapter.yes_probability(prefix, question)
        except LivesightError:
            raise
        except Exception:
            mem.prefix = None
            raise
        end = prefix.end if prefix.end is not None else 0.0
        return Evaluation(score, end, prefix.wall_end, mem.last_image)

    def describe(self, key: int, stream: str, prompt: str, max_new_tokens: int, cancel: threading.Event) -> Generated:
        """A short answer to ``prompt`` on the cached prefix (no recall, no earlier turns): an alert's
        description or a caption. Stops soon after ``cancel`` is set (the caller then discards it)."""
        ask = Ask(key, stream, prompt, (), max_new_tokens, cancel, recall=OFF)
        text, context = self.answer(ask, lambda _piece: None)
        mem = self._stream(key, stream)
        wall = mem.prefix.wall_end if mem.prefix is not None else None
        return Generated(text, context.end, wall, mem.last_image)

    def _generate(
        self,
        prefix: Prefix,
        ask: Ask,
        recalled: Recalled,
        detail: np.ndarray | None,
        on_piece: Callable[[str], None],
    ) -> tuple[str, Recalled, bool, Usage | None]:
        # What to try, richest first: without the detail, then without the recalled clips too.
        attempts = [(recalled, detail)]
        if detail is not None:
            attempts.append((recalled, None))
        if recalled.segments:
            attempts.append((Recalled((), ""), None))
        for rec, det in attempts:
            parts: list[str] = []
            try:
                pieces = self.adapter.generate(
                    prefix, ask.turns, ask.question, ask.max_new_tokens, ask.cancel, recalled=rec.segments, detail=det
                )
                for piece in pieces:
                    parts.append(piece)
                    on_piece(piece)
            except TooLarge:
                if parts or (not rec.segments and det is None):
                    raise
                continue
            usage = pieces.usage if isinstance(pieces, CountsUsage) else None
            return "".join(parts), rec, det is not None, usage
        raise TooLarge("the question does not fit the model's context window")

    def _recall(self, ask: Ask, mem: _StreamMemory) -> Recalled:
        if self.archive is None or self.recall_tokens <= 0:
            return Recalled((), "")
        if self._recaller is None:
            self._recaller = Recaller(
                self.adapter,
                self._archive_reader(),
                budget=self.recall_tokens,
                clip_tokens=self.memory_settings.tiers[0].tokens,
                tz=self.timezone,
            )
        return self._recaller.choose(ask.stream, ask.question, ask.recall, mem.memory.segments(), self._clock())

    def _guided(self, ask: Ask, mem: _StreamMemory, on_piece: Callable[[str], None]) -> str:
        adapter = self.adapter
        if not isinstance(adapter, SupportsGuided) or ask.guided is None:
            raise BadRequest(f"{adapter.model_id} does not support guided answers")
        decoder, _ = adapter.language_model()
        settings = GuidedSettings.for_depth(ask.guided, len(decoder.layers))
        pieces = GuidedAnswerer(adapter, settings).generate(
            mem.memory.segments(), ask.turns, ask.question, ask.max_new_tokens, ask.cancel
        )
        parts: list[str] = []
        for piece in pieces:
            parts.append(piece)
            on_piece(piece)
        return "".join(parts)

    def _context(self, prefix: Prefix, ask: Ask, recalled: Recalled, detail: bool) -> AnswerContext:
        return AnswerContext(
            start=prefix.start,
            end=prefix.end,
            clock_start=self._iso(prefix.wall_start),
            clock_end=self._iso(prefix.wall_end),
            frames=prefix.frames,
            tokens=prefix.length,
            visual_tokens=prefix.visual_tokens,
            guided=ask.guided,
            turns=len(ask.turns),
            recalled=tuple(
                RecalledSpan(s.start, s.end, self._iso(s.wall_start), self._iso(s.wall_end), s.frames)
                for s in recalled.segments
            ),
            recall=recalled.reason or None,
            detail=detail,
        )

    def _iso(self, t: float | None) -> str | None:
        return None if t is None else datetime.fromtimestamp(t, self.timezone).isoformat(timespec="seconds")
