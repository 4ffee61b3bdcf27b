"""HiCo hierarchical rolling memory: a stream of any length in a fixed token budget.

Frames flow through tiers by age (newest on the right of the context, oldest on the left)::

    long-term records  <-  tier L ... tier 2  <-  tier 1 (clips)  <-  recent frames (native)
    (pooled, bounded)      re-merged, fewer        K frames merged      full detail
                           tokens per frame        jointly

- **Recent**: the newest ``recent_frames`` frames stay at native detail (the SlowFast "slow" path).
- **Tier 1 (clip level)**: once ``recent_frames + clip_frames`` native frames wait, the oldest
  ``clip_frames`` are merged jointly (tokens of different frames may merge) to ``tokens_per_frame`` of
  tier 1 per frame, by repeated bipartite soft matching (:mod:`memory.merge`).
- **Tier i > 1 (video level over time)**: when a tier holds more than its capacity, its oldest ``group``
  segments are concatenated and merged again to the next tier's tokens per frame, forming one longer
  segment there.
- **Eviction**: the last tier's overflow leaves the context as a compact :class:`Record` (time range and
  size-weighted pooled embedding) in a bounded long-term list.

Invariants after every call (property-tested): in-context tokens never exceed ``budget``; segments are in
time order and never overlap; every token's time lies within its segment's range; sizes in memory plus
evicted sizes equal frames seen x native tokens per frame; the same inputs give the same state.

Pure and synchronous: tensors and timestamps in, tensors out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from memory.merge import merge_tokens
from memory.segment import Segment

_TIME = "\x00time"  # reserved attribute name for token times while merging (cannot clash with extras)


@dataclass(frozen=True, slots=True)
class Tier:
    """One compressed tier: ``tokens_per_frame`` after merging, at most ``capacity`` tokens held."""

    tokens_per_frame: int
    capacity: int


@dataclass(frozen=True, slots=True)
class HiCoSettings:
    """How a :class:`HiCoMemory` compresses; validated on construction (``ValueError`` if infeasible).

    Attributes:
        budget: hard cap on in-context visual tokens.
        native_tokens: visual tokens per frame as the encoder gives them.
        tiers: tier 1 (clips) first, then older tiers; tokens per frame should not increase with age.
        clip_frames: frames per clip (HiCo: 4).
        recent_frames: newest frames kept at native detail.
        group: adjacent segments of one tier merged into one segment of the next.
        long_term: records kept after eviction (oldest dropped first).
        heads: similarity heads for merging (see :func:`memory.merge.similarity`).
    """

    budget: int
    native_tokens: int
    tiers: tuple[Tier, ...]
    clip_frames: int = 4
    recent_frames: int = 4
    group: int = 2
    long_term: int = 4096
    heads: int = 1

    def __post_init__(self) -> None:
        if self.native_tokens < 1 or self.clip_frames < 1 or self.recent_frames < 0 or self.group < 2:
            raise ValueError(
                "need native_tokens >= 1, clip_frames >= 1, recent_frames >= 0, group >= 2; got "
                f"{self.native_tokens}, {self.clip_frames}, {self.recent_frames}, {self.group}"
            )
        if not self.tiers:
            raise ValueError("need at least one tier")
        if self.long_term < 0:
            raise ValueError(f"long_term must be >= 0, got {self.long_term}")
        sizes = self.segment_tokens()
        for i, (tier, seg) in enumerate(zip(self.tiers, sizes, strict=True), start=1):
            if tier.tokens_per_frame < 1:
                raise ValueError(f"tier {i}: tokens_per_frame must be >= 1")
            # A tier that overflows must hold a whole group to pass on (the last tier: one segment).
            need = seg if i == len(self.tiers) else seg * self.group
            if tier.capacity < need:
                raise ValueError(f"tier {i}: capacity {tier.capacity} is below the {need} tokens it must hold")
        used = self.native_max() + sum(t.capacity for t in self.tiers)
        if used > self.budget:
            raise ValueError(
                f"recent frames ({self.native_max()} tokens) and tier capacities "
                f"({sum(t.capacity for t in self.tiers)}) exceed the budget of {self.budget} tokens"
            )

    def native_max(self) -> int:
        """Most native tokens held at once: a clip is cut as soon as ``recent + clip`` frames wait."""
        return (self.recent_frames + self.clip_frames - 1) * self.native_tokens

    def segment_tokens(self) -> list[int]:
        """Tokens of one segment in each tier (frames have a fixed native size, so these are exact)."""
        out = []
        tokens = self.clip_frames * self.native_tokens
        frames = self.clip_frames
        for i, tier in enumerate(self.tiers):
            if i:
                tokens *= self.group
                frames *= self.group
            tokens = min(tokens, frames * tier.tokens_per_frame)
            out.append(tokens)
        return out

    def segment_frames(self) -> list[int]:
        """Frames one segment of each tier stands for."""
        out = [self.clip_frames]
        for _ in self.tiers[1:]:
            out.append(out[-1] * self.group)
        return out

    def full_layout(self) -> list[tuple[int, int]]:
        """``(frames, tokens)`` of each segment, oldest first, when every tier is full: the most segments (and
        so the most time labels) and the most tokens the memory ever holds."""
        out: list[tuple[int, int]] = []
        sizes = zip(self.tiers, self.segment_tokens(), self.segment_frames(), strict=True)
        for tier, tokens, frames in reversed(list(sizes)):
            out += [(frames, tokens)] * (tier.capacity // tokens)
        return out + [(1, self.native_tokens)] * (self.recent_frames + self.clip_frames - 1)

    def max_tokens(self) -> int:
        """The most visual tokens the memory holds at once (at most ``budget``)."""
        return self.native_max() + sum(t.capacity for t in self.tiers)

    @classmethod
    def for_budget(
        cls,
        budget: int,
        native_tokens: int,
        *,
        per_frame: Sequence[int] = (16, 8, 4),
        clip_frames: int = 4,
        recent_frames: int = 4,
        group: int = 2,
        long_term: int = 4096,
        heads: int = 1,
    ) -> HiCoSettings:
        """Tiers at ``per_frame`` tokens per frame sharing what the recent frames leave of ``budget`` equally.

        Each share is rounded down to whole segments of its tier (a tier holds whole segments, so the
        remainder could never be used) and what is left over goes to the oldest tier, which covers the
        most time per token."""
        rest = max(0, budget - (recent_frames + clip_frames - 1) * native_tokens)
        probe = cls(10**12, native_tokens, tuple(Tier(p, 10**11) for p in per_frame), clip_frames, 0, group)
        seg = probe.segment_tokens()
        share = rest // max(1, len(per_frame))
        caps = [share - share % s if share >= s else share for s in seg]
        left = rest - sum(caps)
        caps[-1] += left - left % seg[-1]
        tiers = tuple(Tier(p, c) for p, c in zip(per_frame, caps, strict=True))
        return cls(budget, native_tokens, tiers, clip_frames, recent_frames, group, long_term, heads)

    @classmethod
    def fit(cls, budget: int, native_tokens: int) -> HiCoSettings:
        """The default layout (:meth:`for_budget`), made smaller until it fits a small ``budget``: fewer
        recent frames first, then fewer tiers. Raises ``ValueError`` if not even one tier of clips fits."""
        problem = ""
        for per_frame in ((16, 8, 4), (16, 8), (16,)):
            for recent in (4, 2, 0):
                try:
                    return cls.for_budget(budget, native_tokens, per_frame=per_frame, recent_frames=recent)
                except ValueError as exc:
                    problem = str(exc)
        raise ValueError(f"a budget of {budget} tokens is too small for {native_tokens} tokens per frame: {problem}")


@dataclass(frozen=True, slots=True)
class Record:
    """A segment evicted from the context, kept compactly for later retrieval.

    Attributes:
        start, end: stream seconds covered; frames: frames it stood for.
        size: native tokens it stood for.
        embedding: ``[D]`` size-weighted mean of its tokens (float32).
    """

    start: float
    end: float
    frames: int
    size: int
    embedding: torch.Tensor


@dataclass(frozen=True, slots=True)
class TierStats:
    tier: int  # 0 = recent (native), 1 = clips, 2.. = older
    tokens_per_frame: int
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


class HiCoMemory:
    """Hierarchical rolling memory (see the module docstring)."""

    def __init__(self, settings: HiCoSettings) -> None:
        self.settings = settings
        self.budget = settings.budget
        self._native: deque[Segment] = deque()
        self._tiers: list[deque[Segment]] = [deque() for _ in settings.tiers]
        self._tier_tokens = [0] * len(settings.tiers)
        self._records: deque[Record] = deque(maxlen=settings.long_term)
        self._next_id = 0
        self._seen = 0
        self._evicted_frames = 0
        self._evicted_size = 0
        self._last_t: float | None = None

    # --- input -----------------------------------------------------------------------------------
    def add_frame(self, tokens: torch.Tensor, t: float, extras: dict[str, torch.Tensor] | None = None) -> None:
        """Add one frame's visual tokens and compress whatever has aged.

        Args:
            tokens: ``[N, D]`` with ``N == settings.native_tokens``.
            t: stream time, seconds; strictly later than the previous frame's.
            extras: per-token attributes, each ``[N, ...]``, merged alongside the tokens.
        """
        n = self.settings.native_tokens
        if tokens.ndim != 2 or tokens.shape[0] != n:
            raise ValueError(f"expected [{n}, D] tokens for one frame, got {tuple(tokens.shape)}")
        if self._last_t is not None and not t > self._last_t:
            raise ValueError(f"frame time {t} is not after the previous frame's {self._last_t}")
        self._last_t = t
        self._native.append(
            self._segment(
                [t, t, 1],
                tokens,
                torch.full((n,), t, dtype=torch.float64, device=tokens.device),
                torch.ones(n, dtype=torch.int64, device=tokens.device),
                dict(extras or {}),
                tier=0,
            )
        )
        self._seen += 1
        s = self.settings
        if len(self._native) >= s.recent_frames + s.clip_frames:
            clip = [self._native.popleft() for _ in range(s.clip_frames)]
            self._push(0, self._merge(clip, tier=1))

    # --- compression -----------------------------------------------------------------------------
    def _push(self, i: int, seg: Segment) -> None:
        """Append ``seg`` to tier ``i + 1`` (index ``i``); pass overflow down, evict from the last."""
        tier, cap = self._tiers[i], self.settings.tiers[i].capacity
        tier.append(seg)
        self._tier_tokens[i] += seg.num_tokens
        last = i == len(self._tiers) - 1
        while self._tier_tokens[i] > cap:
            take = 1 if last else min(self.settings.group, len(tier))
            old = [tier.popleft() for _ in range(take)]
            self._tier_tokens[i] -= sum(o.num_tokens for o in old)
            if last:
                self._evict(old[0])
            else:
                self._push(i + 1, self._merge(old, tier=i + 2))

    def _merge(self, segs: Sequence[Segment], tier: int) -> Segment:
        """Concatenate ``segs`` (time order) and merge them jointly to the tier's tokens per frame."""
        frames = sum(s.frames for s in segs)
        start, end = segs[0].start, segs[-1].end
        keys = segs[0].extras.keys()
        merged = merge_tokens(
            torch.cat([s.tokens for s in segs]),
            frames * self.settings.tiers[tier - 1].tokens_per_frame,
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
        return self._segment([start, end, frames], merged.tokens, times, merged.sizes, attrs, tier=tier)

    def _evict(self, seg: Segment) -> None:
        w = seg.sizes.to(torch.float64)
        pooled = (seg.tokens.to(torch.float64) * w[:, None]).sum(0) / w.sum()
        self._records.append(Record(seg.start, seg.end, seg.frames, int(seg.sizes.sum()), pooled.float()))
        self._evicted_frames += seg.frames
        self._evicted_size += int(seg.sizes.sum())

    def _segment(
        self,
        span: list[float],
        tokens: torch.Tensor,
        times: torch.Tensor,
        sizes: torch.Tensor,
        extras: dict[str, torch.Tensor],
        tier: int,
    ) -> Segment:
        seg = Segment(self._next_id, span[0], span[1], int(span[2]), tokens, times, sizes, extras, tier)
        self._next_id += 1
        return seg

    # --- output ----------------------------------------------------------------------------------
    def segments(self) -> tuple[Segment, ...]:
        """The in-context segments, oldest first: the oldest tier first, recent native frames last."""
        out: list[Segment] = []
        for tier in reversed(self._tiers):
            out.extend(tier)
        out.extend(self._native)
        return tuple(out)

    def long_term(self) -> tuple[Record, ...]:
        """Evicted segments, oldest first (at most ``settings.long_term``)."""
        return tuple(self._records)

    def stats(self) -> HiCoStats:
        groups = [(0, self.settings.native_tokens, self._native)]
        groups += [
            (i + 1, t.tokens_per_frame, d)
            for i, (t, d) in enumerate(zip(self.settings.tiers, self._tiers, strict=False))
        ]
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
        )
