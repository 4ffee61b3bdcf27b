"""What the one inference thread owns: the model adapter, and each stream's memory and cached prefix.

Every method of :class:`Inference` blocks and is called only from the engine's single inference thread
(a one-worker executor), so none of this state needs a lock. Nothing here is read by the event loop:
what the loop needs comes back as return values — frozen :class:`MemorySnapshot` values after an ingest,
the text and context of an answer — and answer pieces go out through a callback the caller makes
thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from engine.events import AnswerContext
from errors import BadRequest, LivesightError
from memory import HiCoMemory, HiCoSettings, HiCoStats
from models.adapter import CountsUsage, ModelAdapter, Prefix, SupportsGuided, Turn
from models.guided import GuidedAnswerer, GuidedSettings
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


@dataclass(eq=False)
class _StreamMemory:
    memory: HiCoMemory
    prefix: Prefix | None = None
    ingested: int = 0
    failed: int = 0
    last_captured_at: float | None = None

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(self.memory.stats(), self.ingested, self.failed, self.last_captured_at)


class Inference:
    """The model and every stream's memory and prefix, keyed by the engine's stream keys (inference thread
    only; see the module doc)."""

    def __init__(self, adapter: ModelAdapter, memory_settings: HiCoSettings) -> None:
        self.adapter = adapter
        self.memory_settings = memory_settings
        self._streams: dict[int, _StreamMemory] = {}

    def _stream(self, key: int) -> _StreamMemory:
        mem = self._streams.get(key)
        if mem is None:
            mem = self._streams[key] = _StreamMemory(HiCoMemory(self.memory_settings))
        return mem

    # --- frames ----------------------------------------------------------------------------------
    def ingest(self, batch: Sequence[tuple[int, Frame]]) -> dict[int, MemorySnapshot]:
        """Encode one frame per stream in one batch, add each to its stream's memory and bring that
        stream's cached prefix up to date (so a question finds it current and waits for at most one
        frame's update). A failure loses only the frames it touched, counted in ``failed``."""
        try:
            encoded = self.adapter.encode([frame.image for _, frame in batch])
        except Exception:
            log.exception("encoding %d frame(s) failed", len(batch))
            for key, _ in batch:
                self._stream(key).failed += 1
            return {key: self._stream(key).snapshot() for key, _ in batch}
        for i, (key, frame) in enumerate(batch):
            mem = self._stream(key)
            extras = {k: v[i] for k, v in encoded.extras.items()}
            try:
                mem.memory.add_frame(encoded.tokens[i], frame.pts, extras)
                self._sync_prefix(mem)
            except Exception:
                # Only this stream's frame is lost; the others in the batch go on. The prefix is rebuilt
                # from memory on next use, whatever state the failure left it in.
                log.exception("stream %s: adding frame %d failed", frame.stream, frame.index)
                mem.failed += 1
                mem.prefix = None
                continue
            mem.ingested += 1
            mem.last_captured_at = frame.captured_at
        return {key: self._stream(key).snapshot() for key, _ in batch}

    def drop(self, key: int) -> None:
        """Forget a removed stream's memory and prefix."""
        self._streams.pop(key, None)

    def _sync_prefix(self, mem: _StreamMemory) -> Prefix:
        """Bring the cached prefix up to the memory: append new segments, re-prefill from the first segment
        that changed (re-compression, eviction)."""
        # Taken out while it is updated: if the update fails, the next call rebuilds from scratch.
        prefix, mem.prefix = mem.prefix, None
        mem.prefix = self.adapter.update_prefix(prefix, mem.memory.segments())
        return mem.prefix

    # --- questions -------------------------------------------------------------------------------
    def answer(
        self,
        key: int,
        question: str,
        turns: Sequence[Turn],
        max_new_tokens: int,
        cancel: threading.Event,
        on_piece: Callable[[str], None],
        *,
        guided: GuidedMode | None = None,
    ) -> tuple[str, AnswerContext]:
        """Answer ``question`` about stream ``key``; every text piece goes to ``on_piece`` as it is made.

        On the cached prefix, or with a fresh question-guided prefill when ``guided`` is set. Returns the
        whole text and the context it was answered on. A failure drops the prefix (it is rebuilt on next
        use: never answer on a cache a failure may have left behind) and re-raises.
        """
        mem = self._stream(key)
        try:
            prefix = self._sync_prefix(mem)
            if guided is None:
                pieces = self.adapter.generate(prefix, turns, question, max_new_tokens, cancel)
            else:
                adapter = self.adapter
                if not isinstance(adapter, SupportsGuided):
                    raise BadRequest(f"{adapter.model_id} does not support guided answers")
                decoder, _ = adapter.language_model()
                settings = GuidedSettings.for_depth(guided, len(decoder.layers))
                pieces = GuidedAnswerer(adapter, settings).generate(
                    mem.memory.segments(), turns, question, max_new_tokens, cancel
                )
            parts: list[str] = []
            for piece in pieces:
                parts.append(piece)
                on_piece(piece)
        except LivesightError:
            raise  # a refusal (too large, unsupported): the prefix was restored and stays usable
        except Exception:
            mem.prefix = None
            raise
        context = AnswerContext(
            start=prefix.start,
            end=prefix.end,
            frames=prefix.frames,
            tokens=prefix.length,
            visual_tokens=prefix.visual_tokens,
            guided=guided,
        )
        if isinstance(pieces, CountsUsage):
            context = replace(context, prompt_tokens=pieces.usage.prompt, completion_tokens=pieces.usage.completion)
        return "".join(parts), context
