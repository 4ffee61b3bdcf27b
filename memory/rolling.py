"""The first rolling memory: one segment per frame, a hard token budget, oldest evicted first."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from memory.segment import Segment


@dataclass(frozen=True, slots=True)
class MemoryStats:
    tokens: int  # in-context tokens now
    frames: int  # frames the in-context segments stand for
    frames_seen: int
    frames_evicted: int
    start: float | None  # span of the in-context memory, stream seconds
    end: float | None


class RollingMemory:
    """Per-frame visual tokens under a hard token budget.

    Adding a frame that takes the total over ``budget`` evicts the oldest frames until the total is at
    most ``low_water``. Evicting in batches (rather than one frame per new frame) means the model's cached
    prefix, which must be rebuilt when its start changes, is rebuilt once per ``budget - low_water``
    tokens instead of on every frame.

    Invariant: after every call, ``stats().tokens <= budget``.
    """

    def __init__(self, budget: int, *, low_water: float = 0.75) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1 token, got {budget}")
        if not 0.0 < low_water <= 1.0:
            raise ValueError(f"low_water must be in (0, 1], got {low_water}")
        self.budget = budget
        self._low = max(1, int(budget * low_water))
        self._segments: deque[Segment] = deque()
        self._tokens = 0
        self._next_id = 0
        self._seen = 0
        self._evicted = 0

    def add_frame(self, tokens: torch.Tensor, t: float, extras: dict[str, torch.Tensor] | None = None) -> None:
        """Add one frame's visual tokens.

        Args:
            tokens: ``[N, D]`` embeddings of the frame.
            t: stream time of the frame, seconds; must not go backwards.
            extras: per-token attributes, each ``[N, ...]``.
        """
        n = int(tokens.shape[0])
        if n > self.budget:
            raise ValueError(f"one frame has {n} tokens, more than the whole budget of {self.budget}")
        if self._segments and t < self._segments[-1].end:
            raise ValueError(f"frame time {t} is before the last frame's {self._segments[-1].end}")
        seg = Segment.frame(self._next_id, t, tokens, extras)
        self._next_id += 1
        self._seen += 1
        self._segments.append(seg)
        self._tokens += n
        if self._tokens > self.budget:
            while self._tokens > self._low and len(self._segments) > 1:
                old = self._segments.popleft()
                self._tokens -= old.num_tokens
                self._evicted += old.frames

    def segments(self) -> tuple[Segment, ...]:
        """The in-context segments, oldest first."""
        return tuple(self._segments)

    def stats(self) -> MemoryStats:
        segs = self._segments
        return MemoryStats(
            tokens=self._tokens,
            frames=sum(s.frames for s in segs),
            frames_seen=self._seen,
            frames_evicted=self._evicted,
            start=segs[0].start if segs else None,
            end=segs[-1].end if segs else None,
        )
