"""HiCo hierarchical rolling memory: a stream of any length in a fixed token budget.

Frames flow through tiers by age (newest on the right of the context, oldest on the left)::

    long-term records  <-  tier L ... tier 2  <-  tier 1 (clips)  <-  native frames
    (pooled, bounded)      re-merged, fewer        frames merged        waiting for a clip
                           tokens per frame        jointly              (+ optional recent ring)

- **Native**: frames wait at native detail until ``recent_frames + clip_frames`` are there; then the
  oldest ``clip_frames`` are merged jointly (tokens of different frames may merge) into one clip by
  repeated bipartite soft matching (:mod:`memory.merge`).
- **Tiers**: a tier over its capacity passes its oldest segments on in one batch, down to its ``keep``:
  each group of them is concatenated and merged again into one segment of the next tier; the last tier's
  overflow leaves the context as a compact :class:`Record` (time range and size-weighted pooled
  embedding) in a bounded long-term list. The layout (how many tiers, what each holds) is
  :class:`~memory.layout.HiCoSettings`; why the batches, there.

Invariants after every call (property-tested): in-context tokens never exceed ``budget``; segments are in
time order and never overlap; every token's time lies within its segment's range; wall-clock ranges are
non-decreasing; sizes in memory plus evicted sizes equal frames seen x native tokens per frame; the same
inputs give the same state.

Pure and synchronous: tensors and timestamps in, tensors out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from memory.layout import HiCoSettings, Tier
from memory.merge import merge_tokens
from memory.segment import Segment

__all__ = ["HiCoMemory", "HiCoSettings", "HiCoStats", "Record", "Tier", "TierStats"]

_TIME = "\x00time"  # reserved attribute name for token times while merging (cannot clash with extras)


@dataclass(frozen=True, slots=True)
class Record:
    """A segment evicted from the context, kept compactly (the clip archive, outside ``memory/``, keeps the
    video itself).

    Attributes:
        start, end: stream seconds covered; frames: frames it stood for.
        size: native tokens it stood for.
        embedding: ``[D]`` size-weighted mean of its tokens (float32).
        wall_start, wall_end: wall-clock capture time of its first and last frame, or ``None``.
    """

    start: float
    end: float
    frames: int
    size: int
    embedding: torch.Tensor
    wall_start: float | None = None
    wall_end: float | None = None


@dataclass(frozen=True, slots=True)
class TierStats:
    tier: int  # 0 = native frames, 1 = clips, 2.. = older
    tokens_per_frame: float  # the tier's rate (below 1: a segment merged across time)
    segments: int
    tokens: int
    frames: int
    start: float | None
    end: float | None


@dataclass(frozen=True, slots=True)
class HiCoStats:
    tokens: int  # in-context tokens now
    frames: int  # frames the in-context segments stand for
    frames_seen: int
    frames_evicted: int
    start: float | None  # span of the in-context memory, stream seconds
    end: float | None
    tiers: tuple[TierStats, ...]
    long_term: int  # records held
    evicted_size: int  # native tokens evicted from the context so far
    wall_start: float | None = None  # wall-clock span of the in-context memory, where known
    wall_end: float | None = None


class HiCoMemory:
    """Hierarchical rolling memory (see the module docstring)."""

    def __init__(self, settings: HiCoSettings) -> None:
        self.settings = settings
        self.budget = settings.budget
        self._native: deque[Segment] = deque()
        self._tiers: list[deque[Segment]] = [deque() for _ in settings.tiers]
        self._records: deque[Record] = deque(maxlen=settings.long_term)
        self._next_id = 0
        self._seen = 0
        self._evicted_frames = 0
        self._evicted_size = 0
        self._last_t: float | None = None
        self._last_wall: float | None = None

    # --- input -----------------------------------------------------------------------------------
    def add_frame(
        self,
        tokens: torch.Tensor,
        t: float,
        extras: dict[str, torch.Tensor] | None = None,
        *,
        wall: float | None = None,
    ) -> Segment | None:
        """Add one frame's visual tokens and compress whatever has aged.

        Args:
            tokens: ``[N, D]`` with ``N == settings.native_tokens``.
            t: stream time, seconds; strictly later than the previous frame's.
            extras: per-token attributes, each ``[N, ...]``, merged alongside the tokens.
            wall: wall-clock capture time (seconds since the epoch), or ``None`` if unknown. A clock that
                steps back is held at the latest time seen, so wall-clock ranges never go backwards.

        Returns:
            The clip (tier 1 segment) this frame completed, or ``None``: every clip passes through here
            once, so a caller can archive them all (and replay them with :meth:`add_clip`).
        """
        n = self.settings.native_tokens
        if tokens.ndim != 2 or tokens.shape[0] != n:
            raise ValueError(f"expected [{n}, D] tokens for one frame, got {tuple(tokens.shape)}")
        self._check_after(t)
        if wall is not None and self._last_wall is not None:
            wall = max(wall, self._last_wall)
        self._last_t = t
        self._last_wall = wall if wall is not None else self._last_wall
        frame = self._segment(
            [t, t, 1],
            tokens,
            torch.full((n,), t, dtype=torch.float64, device=tokens.device),
            torch.ones(n, dtype=torch.int64, device=tokens.device),
            dict(extras or {}),
            tier=0,
            wall=(wall, wall),
        )
        self._native.append(frame)
        self._seen += 1
        s = self.settings
        if len(self._native) < s.recent_frames + s.clip_frames:
            return None
        clip = self._merge([self._native.popleft() for _ in range(s.clip_frames)], tier=1)
        self._push(0, [clip])
        return clip

    def add_clip(self, clip: Segment) -> None:
        """Push a clip (a tier 1 segment, as :meth:`add_frame` returned it, possibly read back from disk)
        straight into tier 1 and compress as usual: how memory is rebuilt after a restart.

        Replaying a stream's clips in order into a fresh memory with the same settings gives the state live
        ingest had after the last of them, tokens, times, tiers and evictions alike, except: segment ids are
        new (the memory numbers its own), and frames that had not yet formed a clip were never archived.
        Replaying only the newest clips gives a memory with the same layout and invariants, whose tiers
        batch at different moments; its context starts at the first clip replayed.

        Raises ``ValueError`` if ``clip`` is not shaped like this memory's clips (frames, tokens, sizes
        adding up to ``frames x native_tokens``), does not start after the memory's last frame, or native
        frames are waiting (they would end up after a newer clip).
        """
        s = self.settings
        tokens = s.segment_tokens()[0]
        if clip.tier != 1 or clip.frames != s.clip_frames or clip.num_tokens != tokens:
            raise ValueError(
                f"expected a tier 1 clip of {s.clip_frames} frames and {tokens} tokens, got tier {clip.tier}, "
                f"{clip.frames} frames, {clip.num_tokens} tokens"
            )
        if int(clip.sizes.sum()) != clip.frames * s.native_tokens:
            raise ValueError(f"clip sizes add up to {int(clip.sizes.sum())}, not {clip.frames * s.native_tokens}")
        if self._native:
            raise ValueError(f"{len(self._native)} native frames are waiting; clips can only be added before them")
        self._check_after(clip.start)
        wall_start, wall_end = clip.wall_start, clip.wall_end
        if self._last_wall is not None:
            wall_start = None if wall_start is None else max(wall_start, self._last_wall)
            wall_end = None if wall_end is None else max(wall_end, self._last_wall)
        self._last_t = clip.end
        self._last_wall = wall_end if wall_end is not None else self._last_wall
        self._seen += clip.frames
        self._push(0, [replace(clip, id=self._new_id(), wall_start=wall_start, wall_end=wall_end)])

    def _check_after(self, t: float) -> None:
        if self._last_t is not None and not t > self._last_t:
            raise ValueError(f"frame time {t} is not after the previous frame's {self._last_t}")

    # --- compression -----------------------------------------------------------------------------
    def _push(self, i: int, segs: Sequence[Segment]) -> None:
        """Append ``segs`` to tier ``i + 1`` (index ``i``). Over capacity, pass its oldest segments on in one
        batch, a group per new segment of the next tier, or (the last tier) evict them, down to ``keep``."""
        tier, spec = self._tiers[i], self.settings.tiers[i]
        tier.extend(segs)
        if len(tier) <= spec.capacity:
            return
        if i == len(self._tiers) - 1:
            for _ in range(len(tier) - spec.keep):
                self._evict(tier.popleft())
            return
        group = self.settings.groups()[i + 1]
        leaving = [tier.popleft() for _ in range((len(tier) - spec.keep) // group * group)]
        merged = [self._merge(leaving[k : k + group], tier=i + 2) for k in range(0, len(leaving), group)]
        self._push(i + 1, merged)

    def _merge(self, segs: Sequence[Segment], tier: int) -> Segment:
        """Concatenate ``segs`` (time order) and merge them jointly to the tier's tokens per segment."""
        frames = sum(s.frames for s in segs)
        start, end = segs[0].start, segs[-1].end
        keys = segs[0].extras.keys()
        merged = merge_tokens(
            torch.cat([s.tokens for s in segs]),
            self.settings.tiers[tier - 1].tokens,
            sizes=torch.cat([s.sizes for s in segs]),
            attrs={
                _TIME: torch.cat([s.times for s in segs]),
                **{k: torch.cat([s.extras[k] for s in segs]) for k in keys},
            },
            heads=self.settings.heads,
        )
        attrs = dict(merged.attrs)
        # A size-weighted mean of times inside [start, end] can land an ulp outside it in float64.
        times = attrs.pop(_TIME).clamp(start, end)
        wall = (segs[0].wall_start, segs[-1].wall_end)
        return self._segment([start, end, frames], merged.tokens, times, merged.sizes, attrs, tier=tier, wall=wall)

    def _evict(self, seg: Segment) -> None:
        w = seg.sizes.to(torch.float64)
        pooled = (seg.tokens.to(torch.float64) * w[:, None]).sum(0) / w.sum()
        size = int(seg.sizes.sum())
        self._records.append(Record(seg.start, seg.end, seg.frames, size, pooled.float(), seg.wall_start, seg.wall_end))
        self._evicted_frames += seg.frames
        self._evicted_size += size

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _segment(
        self,
        span: list[float],
        tokens: torch.Tensor,
        times: torch.Tensor,
        sizes: torch.Tensor,
        extras: dict[str, torch.Tensor],
        tier: int,
        wall: tuple[float | None, float | None],
    ) -> Segment:
        return Segment(
            self._new_id(), span[0], span[1], int(span[2]), tokens, times, sizes, extras, tier, wall[0], wall[1]
        )

    # --- output ----------------------------------------------------------------------------------
    def segments(self) -> tuple[Segment, ...]:
        """The in-context segments, oldest first: the oldest tier first, native frames last."""
        out: list[Segment] = []
        for tier in reversed(self._tiers):
            out.extend(tier)
        out.extend(self._native)
        return tuple(out)

    def long_term(self) -> tuple[Record, ...]:
        """Evicted segments, oldest first (at most ``settings.long_term``)."""
        return tuple(self._records)

    def stats(self) -> HiCoStats:
        specs = self.settings.tiers
        groups: list[tuple[int, float, deque[Segment]]] = [(0, float(self.settings.native_tokens), self._native)]
        groups += [(i + 1, t.tokens_per_frame, d) for i, (t, d) in enumerate(zip(specs, self._tiers, strict=True))]
        tiers = tuple(
            TierStats(
                tier=i,
                tokens_per_frame=p,
                segments=len(d),
                tokens=sum(s.num_tokens for s in d),
                frames=sum(s.frames for s in d),
                start=d[0].start if d else None,
                end=d[-1].end if d else None,
            )
            for i, p, d in groups
        )
        segs = self.segments()
        walls = [w for s in segs for w in (s.wall_start, s.wall_end) if w is not None]
        return HiCoStats(
            tokens=sum(t.tokens for t in tiers),
            frames=sum(t.frames for t in tiers),
            frames_seen=self._seen,
            frames_evicted=self._evicted_frames,
            start=segs[0].start if segs else None,
            end=segs[-1].end if segs else None,
            tiers=tiers,
            long_term=len(self._records),
            evicted_size=self._evicted_size,
            wall_start=min(walls) if walls else None,
            wall_end=max(walls) if walls else None,
        )
