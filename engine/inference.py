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
from dataclasses import dataclass
from datetime import tzinfo

import numpy as np

from engine.answering import Answerer, Answering, Ask, Progress
from engine.recall import OFF, Recaller
from errors import BadRequest, LivesightError, NoVideo
from memory import HiCoMemory, HiCoSettings, HiCoStats, Segment
from models.adapter import ModelAdapter, Prefix, SupportsRecall, SupportsYesNo
from store.archive import Archive, ArchiveReader
from stream.frame import Frame

log = logging.getLogger("livesight.engine")


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
class Evaluation:
    """A watch's condition read on a stream's cached prefix: P(yes), and the frame it was read at."""

    score: float
    stream_time: float  # memory time of the newest frame in the prefix
    wall: float | None  # its wall-clock capture time (live streams)
    image: np.ndarray | None  # the newest frame, ``[H, W, 3]`` uint8 RGB (read-only): the snapshot


@dataclass(frozen=True, slots=True)
class Generated:
    """A short description made on a stream's cached prefix, and the frame it was made on."""

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
        self._answerer = Answerer(adapter, recaller=self._recaller_for, timezone=timezone, clock=clock)

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
    def begin(self, ask: Ask) -> tuple[Answering, Progress]:
        """Start answering ``ask`` (see :mod:`engine.answering`); its first step's progress comes with it.

        Raises :class:`NoVideo` for a stream with nothing in memory, and the refusals of the model
        (:class:`TooLarge`...). Any other failure drops the stream's prefix (it is rebuilt on next use:
        never answer on a cache a failure may have left behind) and re-raises.
        """
        mem = self._stream(ask.key, ask.stream)
        if mem.memory.stats().frames == 0:
            raise NoVideo(f"stream {ask.stream!r} has no video in memory yet; ask again soon")
        try:
            prefix = self._sync_prefix(mem)
            return self._answerer.begin(ask, prefix, mem.memory, mem.last_image)
        except LivesightError:
            raise
        except Exception:
            mem.prefix = None
            raise

    def step(self, answers: Sequence[Answering]) -> list[Progress]:
        """Move every answer one token on (batched where the model can); cancelled ones end."""
        return self._answerer.step(answers)

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

    def begin_description(
        self, key: int, stream: str, prompt: str, max_new_tokens: int, cancel: threading.Event
    ) -> tuple[Answering, Progress, Generated]:
        """Begin a short answer to ``prompt`` on the cached prefix (no recall, no earlier turns): an alert's
        description or a caption, stepped like any answer. The third value is the frame it is made on
        (its ``text`` empty: filled in when the answer is done)."""
        ask = Ask(key, stream, prompt, (), max_new_tokens, cancel, recall=OFF)
        answering, progress = self.begin(ask)
        mem = self._stream(key, stream)
        prefix = mem.prefix
        wall = prefix.wall_end if prefix is not None else None
        return answering, progress, Generated("", answering.context.end, wall, mem.last_image)

    def _recaller_for(self) -> Recaller | None:
        if self.archive is None or self.recall_tokens <= 0:
            return None
        if self._recaller is None:
            self._recaller = Recaller(
                self.adapter,
                self._archive_reader(),
                budget=self.recall_tokens,
                clip_tokens=self.memory_settings.tiers[0].tokens,
                tz=self.timezone,
            )
        return self._recaller
