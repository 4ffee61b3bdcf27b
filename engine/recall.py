"""Recall: which archived clips a question gets, at clip detail, after the cached prefix.

A question may be about video the in-context memory holds only coarsely (older tiers) or no longer holds
at all. Before answering, archived clips are chosen within a token budget and placed, with their time
labels, after the cached prefix and before the question, so the prefix is reused untouched:

- ``"off"``: none.
- a window (``{"start": ..., "end": ...}``): the clips in it (wall clock for live streams, stream seconds
  for files).
- ``"auto"`` (the default): a time reference in the question ("at 14:05", "10 minutes ago", "this
  morning"; :mod:`engine.timewords`) selects a window of a live stream's clips; otherwise the content
  decides, among the clips older than what the memory holds at clip detail.

When more clips qualify than the budget holds, the model itself ranks them (:mod:`models.probe`: the
question's attention queries against the keys kept per clip) when it can, else they are taken evenly
spaced. Clips the memory still holds at clip detail are never recalled (it has them already). Chosen
clips go in time order. Inference thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Literal

import torch

from engine.timewords import TimeReader
from memory.segment import Segment
from models.adapter import ModelAdapter, SupportsRecall
from models.probe import relevance
from store.archive import ArchiveReader, ClipInfo

#: Newest archived clips content-based recall considers (about 4.5 hours of 4-frame clips at 1 fps).
CONTENT_CANDIDATES = 4096


@dataclass(frozen=True, slots=True)
class RecallRequest:
    """What an ``ask`` asked for: ``auto``, ``off``, or an explicit ``window``."""

    mode: Literal["auto", "off", "window"] = "auto"
    wall: tuple[float, float] | None = None  # seconds since the epoch
    stream_time: tuple[float, float] | None = None  # stream seconds


AUTO = RecallRequest()
OFF = RecallRequest("off")


@dataclass(frozen=True, slots=True)
class Recalled:
    """The clips chosen for a question, and why."""

    segments: tuple[Segment, ...]
    reason: str  # "time" (a window from the question or the request), "content", or "" when none


class Recaller:
    """Chooses archived clips for questions about one model's streams (see the module doc)."""

    def __init__(
        self, adapter: ModelAdapter, reader: ArchiveReader, *, budget: int, clip_tokens: int, tz: tzinfo
    ) -> None:
        self.adapter = adapter
        self.reader = reader
        self.budget = budget  # visual tokens of recalled clips per question
        self.clip_tokens = clip_tokens  # visual tokens of one archived clip
        self.tz = tz
        self._times = TimeReader()

    def choose(
        self, stream: str, question: str, request: RecallRequest, memory: Sequence[Segment], now: float
    ) -> Recalled:
        """Clips of ``stream`` for ``question``; ``memory`` is the stream's in-context segments, ``now`` the
        wall clock."""
        if request.mode == "off" or self.budget <= 0:
            return Recalled((), "")
        detailed = [s for s in memory if s.tier <= 1]  # what the memory holds at clip detail (or finer)
        live = any(s.wall_start is not None for s in memory)
        reason = "time"
        point: float | None = None
        if request.mode == "window":
            infos = self.reader.clips(stream, wall=request.wall, stream_time=request.stream_time)
        else:
            window = self._times.window(question, datetime.fromtimestamp(now, self.tz)) if live else None
            if window is not None:
                infos = self.reader.clips(stream, wall=(window.start, window.end))
                point = window.point
            else:
                reason = "content"
                before = detailed[0].start if detailed else float("inf")
                infos = [c for c in self.reader.clips(stream, newest=CONTENT_CANDIDATES) if c.end < before]
        infos = [c for c in infos if not _held(c, detailed)]
        if not infos:
            return Recalled((), "")
        picked = self._pick(infos, question, ranked=reason == "content", point=point)
        dtype = next((s.tokens.dtype for s in memory), None)
        segments = []
        for i, info in enumerate(picked):
            try:
                segments.append(self.reader.segment(info, id=-1 - i, dtype=dtype))
            except KeyError:  # removed by retention since it was listed
                continue
        return Recalled(tuple(segments), reason if segments else "")

    def _pick(
        self, infos: list[ClipInfo], question: str, *, ranked: bool, point: float | None = None
    ) -> list[ClipInfo]:
        """At most the budget's worth of clips, in time order: those nearest the moment the question names
        ("at 14:05:07": what was on screen then), else the most relevant when the model can rank them
        (always for content recall), else evenly spaced over the window."""
        k = max(1, self.budget // max(1, self.clip_tokens))
        if len(infos) <= k and not ranked:
            return infos
        if point is not None and not ranked:
            if infos[0].wall_start is None:
                return infos[:k]
            nearest = sorted(infos, key=lambda c: abs(((c.wall_start or 0.0) + (c.wall_end or 0.0)) / 2 - point))[:k]
            return sorted(nearest, key=lambda c: c.start)
        if isinstance(self.adapter, SupportsRecall):
            keys = self.reader.keys(infos)
            queries = self.adapter.recall_queries(question)
            scored = [(relevance(queries, key), i) for i, key in enumerate(keys) if key is not None]
            if scored:
                best = sorted(scored, reverse=True)[:k]
                return [infos[i] for _, i in sorted(best, key=lambda pair: pair[1])]
        if len(infos) <= k:
            return infos
        step = torch.linspace(0, len(infos) - 1, k).round().long().tolist()
        return [infos[i] for i in sorted(set(step))]


def _held(clip: ClipInfo, detailed: Sequence[Segment]) -> bool:
    """Whether the memory holds ``clip``'s time at clip detail already."""
    return any(s.start <= clip.start and clip.end <= s.end for s in detailed)
