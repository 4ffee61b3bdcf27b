"""A segment: a run of visual tokens that covers a span of stream time."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, eq=False)
class Segment:
    """Visual tokens for the stream-time span ``[start, end]`` seconds.

    Segments are immutable. A segment that is re-compressed becomes a new segment with a new ``id``, so a
    cached model prefix can tell "only appended" from "changed" by comparing ids.

    Attributes:
        id: unique within a memory, increasing in creation order.
        start, end: stream seconds of the first and last frame it covers.
        frames: how many frames it stands for.
        tokens: ``[T, D]`` visual embeddings in the language model's input space.
        times: ``[T]`` float64 stream time of each token (a merged token: the size-weighted mean).
        sizes: ``[T]`` int64 how many native tokens each token stands for.
        extras: per-token attributes a model family needs, each ``[T, ...]`` (e.g. 3-D positions),
            carried through every merge and eviction with the same assignment as ``tokens``.
        tier: compression level (0 = native tokens, 1 = clips, 2.. = older tiers).
        wall_start, wall_end: wall-clock capture time (seconds since the epoch) of the first and the last
            frame it covers; ``None`` when unknown. A merged segment takes the first part's start and the
            last part's end.
    """

    id: int
    start: float
    end: float
    frames: int
    tokens: torch.Tensor
    times: torch.Tensor
    sizes: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    tier: int = 0
    wall_start: float | None = None
    wall_end: float | None = None

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.ndim != 2 or self.times.shape != (n,) or self.sizes.shape != (n,):
            raise ValueError(
                f"segment shapes disagree: tokens {tuple(self.tokens.shape)}, times {tuple(self.times.shape)}, "
                f"sizes {tuple(self.sizes.shape)}"
            )
        for key, value in self.extras.items():
            if value.shape[0] != n:
                raise ValueError(f"extra {key!r} has {value.shape[0]} rows for {n} tokens")
        if self.end < self.start:
            raise ValueError(f"segment ends ({self.end}) before it starts ({self.start})")
        if self.wall_start is not None and self.wall_end is not None and self.wall_end < self.wall_start:
            raise ValueError(f"segment's wall clock ends ({self.wall_end}) before it starts ({self.wall_start})")

    @classmethod
    def frame(
        cls,
        id: int,
        t: float,
        tokens: torch.Tensor,
        extras: dict[str, torch.Tensor] | None = None,
        *,
        wall: float | None = None,
    ) -> Segment:
        """One native frame at stream time ``t`` (and wall-clock ``wall``): ``tokens [N, D]`` as they are."""
        n = int(tokens.shape[0])
        return cls(
            id=id,
            start=t,
            end=t,
            frames=1,
            tokens=tokens,
            times=torch.full((n,), t, dtype=torch.float64, device=tokens.device),
            sizes=torch.ones(n, dtype=torch.int64, device=tokens.device),
            extras=dict(extras or {}),
            wall_start=wall,
            wall_end=wall,
        )

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])
