"""The shape of a HiCo memory: its tiers, what each holds, and the default layout for a token budget.

A layout is a chain of tiers, newest first. Tier 1 holds clips (``clip_frames`` frames merged jointly to
16 tokens per frame); every deeper tier merges a group of segments of the tier above into one segment, so
its segments cover more time in (at most) the same tokens. The default layout (:meth:`HiCoSettings.fit`)
uses groups of 4 and segments of ``16 * clip_frames`` tokens at every tier::

    tier             1 (clips)   2      3      4       5        6
    tokens / frame   16          4      1      1/4     1/16     1/64
    frames / segment 4           16     64     256     1024     4096      (clip_frames = 4)

Below one token per frame a segment merges across time as well as space (tier 4: 256 frames in 64 tokens).

**Tiered compaction with hysteresis.** A tier passes segments on only when it goes over its ``capacity``,
and then in one batch down to ``keep``. The cached prefix of a model is re-prefilled from the first
segment that changed (segments are in time order, oldest first), so what a step costs is the tokens after
the oldest change: appending is cheap, a change deep in the past re-prefills everything newer. Batches make
the expensive changes rare: tier 1 passes ``4 * batch`` clips at once, middle tiers pass a whole group at
once, and the oldest tier evicts one segment per deeper merge (every ``frames`` of its segments, for the
default hour-long layout about every 17 minutes). :meth:`HiCoSettings.reprefill_estimate` counts it.

Pure: integers in, a validated layout out.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

CLIP_TOKENS_PER_FRAME = 16  # HiCo's clip level
CLIP_FRAMES = 4  # frames merged jointly into a clip (HiCo: 4)
FACTOR = 4  # segments of one tier merged into one of the next: 4x the time in the same tokens
SPAN_FRAMES = 3600  # what the default layout keeps in context: an hour at 1 fps
#: Re-prefilled visual tokens per frame (a multiple of the native tokens per frame) the default layout aims
#: under, estimated. The target is 2; the margin is for the estimate's error and the segments' text labels.
REPREFILL_TARGET = 1.6
MAX_LEVELS = 6  # tier 6 at 4 frames per clip: 4096 frames (68 minutes) in one segment
MAX_BATCH = 64  # groups of clips tier 1 passes on at once


def default_clip_frames(native_tokens: int) -> int:
    """Frames per clip: HiCo's 4, unless a frame is already at clip detail (``native_tokens <= 16``). Then a
    joint merge keeps every token, and 4 native frames in context would only be prefilled twice (as frames,
    then as the clip): each frame is its own clip."""
    return CLIP_FRAMES if native_tokens > CLIP_TOKENS_PER_FRAME else 1


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier: segments of ``frames`` frames, merged to at most ``tokens`` tokens each.

    It holds at most ``capacity`` segments after every step. When a push takes it over, its oldest
    segments leave in one batch until ``keep`` remain: to the next tier, merged a group at a time (fewer
    than a group that cannot be merged stays), or, from the last tier, out of the context.
    """

    frames: int
    tokens: int
    keep: int
    capacity: int

    @property
    def tokens_per_frame(self) -> float:
        return self.tokens / self.frames


@dataclass(frozen=True, slots=True)
class HiCoSettings:
    """How a :class:`~memory.hico.HiCoMemory` compresses; validated on construction (``ValueError`` if the
    layout is inconsistent or over ``budget``).

    Attributes:
        budget: hard cap on in-context visual tokens.
        native_tokens: visual tokens per frame as the encoder gives them.
        tiers: tier 1 (clips of ``tiers[0].frames`` frames) first, then older tiers; each tier's ``frames``
            is a multiple (at least 2x) of the one before.
        recent_frames: newest frames kept at native detail besides those waiting to form a clip.
        long_term: records of evicted segments kept (oldest dropped first).
        heads: similarity heads for merging (see :func:`memory.merge.similarity`).
    """

    budget: int
    native_tokens: int
    tiers: tuple[Tier, ...]
    recent_frames: int = 0
    long_term: int = 4096
    heads: int = 1

    def __post_init__(self) -> None:
        if self.native_tokens < 1 or self.recent_frames < 0 or self.long_term < 0 or self.heads < 1:
            raise ValueError(
                "need native_tokens >= 1, recent_frames >= 0, long_term >= 0, heads >= 1; got "
                f"{self.native_tokens}, {self.recent_frames}, {self.long_term}, {self.heads}"
            )
        if not self.tiers:
            raise ValueError("need at least one tier")
        last = len(self.tiers) - 1
        for i, tier in enumerate(self.tiers):
            name = f"tier {i + 1}"
            if tier.frames < 1 or tier.tokens < 1 or tier.keep < 0 or tier.capacity < 1:
                raise ValueError(f"{name}: need frames >= 1, tokens >= 1, keep >= 0, capacity >= 1; got {tier}")
            if i and (tier.frames % self.tiers[i - 1].frames or tier.frames < 2 * self.tiers[i - 1].frames):
                raise ValueError(f"{name}: {tier.frames} frames is not a multiple >= 2 of tier {i}'s frames")
            # Over capacity, whole groups leave down to ``keep``; what is left must be back within capacity.
            group = self.groups()[i + 1] if i < last else 1
            if tier.capacity < tier.keep + group - 1:
                raise ValueError(f"{name}: capacity {tier.capacity} is below keep {tier.keep} + a group of {group} - 1")
        if self.max_tokens() > self.budget:
            raise ValueError(
                f"native frames ({self.native_max()} tokens) and tier capacities "
                f"({self.max_tokens() - self.native_max()}) exceed the budget of {self.budget} tokens"
            )

    # --- shape -----------------------------------------------------------------------------------
    @property
    def clip_frames(self) -> int:
        """Frames merged jointly into one clip (tier 1 segment)."""
        return self.tiers[0].frames

    def groups(self) -> list[int]:
        """Segments of the level above merged into one segment of each tier (tier 1: native frames)."""
        frames = [1] + [t.frames for t in self.tiers]
        return [b // a for a, b in itertools.pairwise(frames)]

    def native_max(self) -> int:
        """Most native tokens held at once: a clip is cut as soon as ``recent + clip`` frames wait."""
        return (self.recent_frames + self.clip_frames - 1) * self.native_tokens

    def segment_tokens(self) -> list[int]:
        """Tokens of one segment in each tier (frames have a fixed native size, so these are exact)."""
        out: list[int] = []
        tokens = self.native_tokens
        for tier, group in zip(self.tiers, self.groups(), strict=True):
            tokens = min(tier.tokens, tokens * group)
            out.append(tokens)
        return out

    def segment_frames(self) -> list[int]:
        """Frames one segment of each tier stands for."""
        return [t.frames for t in self.tiers]

    def full_layout(self) -> list[tuple[int, int]]:
        """``(frames, tokens)`` of each segment, oldest first, when every tier is at capacity: the most
        segments (and so the most time labels) and the most tokens the memory ever holds."""
        out: list[tuple[int, int]] = []
        for tier, tokens in reversed(list(zip(self.tiers, self.segment_tokens(), strict=True))):
            out += [(tier.frames, tokens)] * tier.capacity
        return out + [(1, self.native_tokens)] * (self.recent_frames + self.clip_frames - 1)

    def max_tokens(self) -> int:
        """The most visual tokens the memory holds at once (at most ``budget``)."""
        return self.native_max() + sum(t.capacity * s for t, s in zip(self.tiers, self.segment_tokens(), strict=True))

    def steady_frames(self) -> int:
        """Frames the memory covers at least, once it has first evicted: every tier at its ``keep`` (a tier
        never goes below it once it has passed segments on). At 1 fps, seconds of stream in context."""
        return sum(t.keep * t.frames for t in self.tiers)

    # --- cost ------------------------------------------------------------------------------------
    def reprefill_estimate(self) -> float:
        """Visual tokens a cached prefix re-prefills per frame in steady state, as a multiple of
        ``native_tokens`` (1.0: each frame's tokens once, nothing else).

        A step costs the tokens after the oldest segment it changed. Per clip of ``c`` frames: ``c - 1``
        native frames appended, then the step that cuts the clip costs the clip (and the recent frames).
        Every ``P_j`` frames (the frames tier ``j`` passes on at once) that step instead costs what follows
        tier ``j + 1``'s end: the new segments there plus every tier up to ``j`` at its ``keep``; the oldest
        tier's eviction costs the whole memory. Averaged: the clip step's cost plus, for each tier, the
        difference it makes times how often it happens. Approximate: a tier's leftover under a group and
        the recent frames are counted at their steady size.
        """
        n, c = self.native_tokens, self.clip_frames
        sizes, groups = self.segment_tokens(), self.groups()
        kept = self.recent_frames * n
        cost = float(sizes[0] + kept)  # the step that cuts a clip: the clip, then the recent frames
        per_frame = ((c - 1) * n + cost) / c
        period = float(c)
        last = len(self.tiers) - 1
        for j, tier in enumerate(self.tiers):
            kept += tier.keep * sizes[j]
            if j < last:
                group = groups[j + 1]
                moved = group * max(1, (tier.capacity + 1 - tier.keep) // group)
                step = moved // group * sizes[j + 1] + kept
            else:
                moved = tier.capacity + 1 - tier.keep
                step = kept
            # Deeper changes happen at a subset of the shallower ones' steps, never more often.
            period = max(period, float(moved * tier.frames))
            per_frame += (step - cost) / period
            cost = step
        return per_frame / n

    # --- layouts ---------------------------------------------------------------------------------
    @classmethod
    def tiered(
        cls,
        budget: int,
        native_tokens: int,
        *,
        levels: int,
        batch: int,
        span_frames: int = SPAN_FRAMES,
        clip_frames: int | None = None,
        recent_frames: int = 0,
        long_term: int = 4096,
        heads: int = 1,
    ) -> HiCoSettings:
        """The default family of layouts: ``levels`` tiers, every segment ``16 * clip_frames`` tokens, each
        deeper tier 4x the frames per segment (so a quarter of the tokens per frame).

        - Tier 1 (clips) passes ``batch`` groups (4 clips each) at once and gets every token the other
          tiers leave: the newest stretch at clip detail, as long as the budget allows.
        - Middle tiers keep one segment and pass one whole group (4 segments) at once.
        - The last tier keeps enough segments that the memory covers ``span_frames`` (with what the tiers
          above always keep) and evicts one at a time, as each arrives; if the budget cannot cover
          ``span_frames``, as many as fit beside one clip.
        - ``levels == 1``: clips only, ``batch`` evicted at once.

        Raises ``ValueError`` if not even one clip and one segment of each tier fit.
        """
        c = clip_frames or default_clip_frames(native_tokens)
        target = CLIP_TOKENS_PER_FRAME * c
        frames = [c * FACTOR**j for j in range(levels)]
        sizes = [min(target, c * native_tokens)]
        for _ in frames[1:]:
            sizes.append(min(target, FACTOR * sizes[-1]))
        room = budget - (recent_frames + c - 1) * native_tokens  # tokens the tiers share
        if levels < 1 or batch < 1:
            raise ValueError(f"need levels >= 1 and batch >= 1, got {levels}, {batch}")
        if levels == 1:
            cap = room // sizes[0]
            if cap - batch + 1 < 1:
                raise ValueError(f"no room for {batch} clips")
            tiers: tuple[Tier, ...] = (Tier(c, target, cap - batch + 1, cap),)
            return cls(budget, native_tokens, tiers, recent_frames, long_term, heads)
        mids = [Tier(f, target, 1, FACTOR) for f in frames[1:-1]]
        mid_tokens = sum(t.capacity * s for t, s in zip(mids, sizes[1:-1], strict=True))
        mid_frames = sum(t.keep * t.frames for t in mids)
        swing = FACTOR * batch - 1  # tier 1 holds keep .. keep + swing clips
        # The last tier's keep depends on how many frames tier 1 keeps, which depends on what the last tier
        # leaves: alternate until neither changes (the last tier only shrinks, tier 1 only grows).
        keep_first, keep_last = 0, -1
        while True:
            need = max(1, math.ceil((span_frames - mid_frames - keep_first * c) / frames[-1]))
            fits = (room - mid_tokens - (1 + swing) * sizes[0]) // sizes[-1]  # beside a single clip kept
            new_last = min(need, fits)
            if new_last == keep_last:
                break
            keep_last = new_last
            keep_first = (room - mid_tokens - keep_last * sizes[-1]) // sizes[0] - swing
        if keep_last < 1 or keep_first < 1:
            raise ValueError(f"{levels} tiers with batches of {batch} leave no room for a clip")
        tiers = (
            Tier(c, target, keep_first, keep_first + swing),
            *mids,
            Tier(frames[-1], target, keep_last, keep_last),
        )
        return cls(budget, native_tokens, tiers, recent_frames, long_term, heads)

    @classmethod
    def fit(cls, budget: int, native_tokens: int, *, span_frames: int = SPAN_FRAMES) -> HiCoSettings:
        """The default layout for ``budget`` tokens: of the :meth:`tiered` layouts (1 to 6 tiers, tier 1
        passing 1 to 64 groups at once) the one that, in order of priority,

        1. re-prefills at most :data:`REPREFILL_TARGET` native frames' worth per frame (estimated),
        2. covers the most of ``span_frames`` (an hour at 1 fps) at all times,
        3. keeps the most frames at clip detail (16 tokens per frame) at all times,
        4. has the fewest tiers.

        So a small budget gives up clip detail first, then span; ``ValueError`` if not even one tier of
        clips fits.
        """
        best: HiCoSettings | None = None
        best_key: tuple[bool, int, int, int] | None = None
        for levels in range(1, MAX_LEVELS + 1):
            for batch in range(1, MAX_BATCH + 1):
                try:
                    cand = cls.tiered(budget, native_tokens, levels=levels, batch=batch, span_frames=span_frames)
                except ValueError:
                    continue
                cheap = cand.reprefill_estimate() <= REPREFILL_TARGET
                clip = cand.tiers[0].keep * cand.clip_frames
                key = (cheap, min(cand.steady_frames(), span_frames), clip, -levels)
                if best_key is None or key > best_key:
                    best, best_key = cand, key
                if cheap:
                    break  # a larger batch only keeps fewer clips
        if best is None:
            raise ValueError(
                f"a budget of {budget} tokens is too small for {native_tokens} tokens per frame: not even one tier "
                "of clips fits"
            )
        return best
