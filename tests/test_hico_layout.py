"""The default HiCo layouts: an hour in context, clip detail for the newest frames, cheap prefix updates.

Figures for long runs are in ``bench/memory.py --layout-only``; this checks the same on one eviction period.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from memory.hico import HiCoMemory, HiCoSettings
from memory.layout import REPREFILL_TARGET, SPAN_FRAMES
from memory.segment import Segment

#: Each family's default budget and native tokens per frame (LLaVA-NeXT-Video's budget as fitted into its
#: 4,096-position window by engine/budget.py).
DEFAULTS = {
    "tiny-random": (1024, 16),
    "smolvlm2": (4096, 64),
    "llava-next-video": (2560, 144),
    "llava-onevision": (8192, 196),
    "qwen-vl": (8192, 256),
}


@pytest.mark.parametrize("model", DEFAULTS)
def test_the_default_layout_holds_an_hour_within_the_budget(model: str) -> None:
    budget, native = DEFAULTS[model]
    cfg = HiCoSettings.fit(budget, native)
    assert cfg.max_tokens() <= budget
    assert sum(tokens for _, tokens in cfg.full_layout()) == cfg.max_tokens()
    assert cfg.steady_frames() >= SPAN_FRAMES  # an hour at 1 fps, at all times once full
    first = cfg.tiers[0]
    assert first.tokens_per_frame >= 16 and first.keep >= 1  # the newest frames at clip detail
    for tier, frames in zip(cfg.tiers, cfg.segment_frames(), strict=True):
        if tier.tokens_per_frame < 1:
            assert frames >= 16  # below a token per frame a segment merges across time
    assert cfg.reprefill_estimate() <= REPREFILL_TARGET


def steady(cfg: HiCoSettings) -> HiCoMemory:
    """A memory that has just evicted for the second time, filled by replaying one made-up clip over and over
    (the state live ingest reaches, see test_hico.py's replay test, without a merge per clip)."""
    mem = HiCoMemory(cfg)
    c, tokens = cfg.clip_frames, cfg.segment_tokens()[0]
    sizes = torch.full((tokens,), c * cfg.native_tokens // tokens, dtype=torch.int64)
    sizes[: c * cfg.native_tokens % tokens] += 1
    g = torch.Generator().manual_seed(0)
    for i in itertools.count():
        if len(mem.long_term()) >= 2 * (cfg.tiers[-1].capacity + 1 - cfg.tiers[-1].keep):
            return mem
        t = float(i * c)
        times = torch.linspace(t, t + c - 1, tokens, dtype=torch.float64)
        mem.add_clip(Segment(0, t, t + c - 1, c, torch.randn(tokens, 2, generator=g), times, sizes, tier=1))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("model", DEFAULTS)
def test_the_default_layout_reprefills_under_twice_a_frame_per_frame(model: str) -> None:
    """Live ingest over one period of the oldest tier's evictions: what a cached prefix re-prefills per
    frame (from the first segment that changed to the end) is at most twice a frame's native tokens, and
    the context covers an hour at every step."""
    torch.set_num_threads(1)
    budget, native = DEFAULTS[model]
    cfg = HiCoSettings.fit(budget, native)
    mem = steady(cfg)
    t0 = mem.segments()[-1].end + 1
    frame = torch.randn(native, 2, generator=torch.Generator().manual_seed(1))
    before = [s.id for s in mem.segments()]
    period = cfg.tiers[-1].frames * (cfg.tiers[-1].capacity + 1 - cfg.tiers[-1].keep)
    reprefilled = 0
    for i in range(period):
        mem.add_frame(frame, t0 + i)
        segs = mem.segments()
        same = next((k for k, (a, b) in enumerate(zip(before, segs, strict=False)) if a != b.id), None)
        kept = min(len(before), len(segs)) if same is None else same
        reprefilled += sum(s.num_tokens for s in segs[kept:])
        before = [s.id for s in segs]
        assert sum(s.num_tokens for s in segs) <= budget
        assert segs[-1].end - segs[0].start + 1 >= SPAN_FRAMES
    assert reprefilled / period / native <= 2


def test_small_budgets_shrink_the_layout_and_then_refuse() -> None:
    smallest = 3 * 64 + 64  # three native frames waiting for a clip, and one clip
    for budget in range(16, smallest, 16):
        with pytest.raises(ValueError, match="too small"):
            HiCoSettings.fit(budget, 64)
    spans = []
    for budget in range(smallest, 4096, 48):
        cfg = HiCoSettings.fit(budget, 64)
        assert cfg.max_tokens() <= budget
        assert cfg.tiers[0].keep >= 1
        spans.append(min(cfg.steady_frames(), SPAN_FRAMES))
    assert spans[-1] == SPAN_FRAMES
