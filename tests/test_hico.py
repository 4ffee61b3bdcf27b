"""HiCo memory invariants over arbitrary frame sequences, timestamps and settings (hypothesis)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.hico import HiCoMemory, HiCoSettings, Tier


@st.composite
def configs(draw: st.DrawFn) -> HiCoSettings:
    native = draw(st.integers(1, 12))
    clip = draw(st.integers(1, 5))
    recent = draw(st.integers(0, 4))
    group = draw(st.integers(2, 3))
    per_frame = sorted(draw(st.lists(st.integers(1, 12), min_size=1, max_size=3)), reverse=True)
    base = HiCoSettings.for_budget(
        10**9, native, per_frame=per_frame, clip_frames=clip, recent_frames=recent, group=group
    )
    sizes = base.segment_tokens()
    tiers = []
    for i, (p, seg) in enumerate(zip(per_frame, sizes, strict=True)):
        need = seg if i == len(sizes) - 1 else seg * group
        tiers.append(Tier(p, need + draw(st.integers(0, 2 * seg))))
    slack = draw(st.integers(0, 20))
    budget = base.native_max() + sum(t.capacity for t in tiers) + slack
    return HiCoSettings(
        budget, native, tuple(tiers), clip, recent, group, draw(st.integers(0, 6)), draw(st.sampled_from([1, 2]))
    )


@st.composite
def streams(draw: st.DrawFn) -> tuple[HiCoSettings, list[float], int]:
    cfg = draw(configs())
    gaps = draw(st.lists(st.floats(0.001, 30.0, allow_nan=False), min_size=0, max_size=120))
    t0 = draw(st.floats(0.0, 1e5, allow_nan=False))
    times, t = [], t0
    for g in gaps:
        if t + g > t:  # a gap too small to advance a large float is skipped
            t += g
            times.append(t)
    return cfg, times, draw(st.integers(0, 2**31 - 1))


def feed(cfg: HiCoSettings, times: list[float], seed: int, check: bool = True) -> HiCoMemory:
    g = torch.Generator().manual_seed(seed)
    mem = HiCoMemory(cfg)
    for t in times:
        tokens = torch.randn(cfg.native_tokens, 4, generator=g)
        pos = torch.arange(cfg.native_tokens).unsqueeze(1).repeat(1, 3)
        mem.add_frame(tokens, t, {"pos": pos})
        if check:
            check_invariants(mem, cfg)
    return mem


def check_invariants(mem: HiCoMemory, cfg: HiCoSettings) -> None:
    segs = mem.segments()
    st_ = mem.stats()
    assert st_.tokens == sum(s.num_tokens for s in segs) <= cfg.budget
    for a, b in itertools.pairwise(segs):
        assert a.end < b.start, "segments overlap or are out of order"
    for s in segs:
        assert s.start <= s.end
        assert bool((s.times >= s.start).all())
        assert bool((s.times <= s.end).all())
        assert s.extras["pos"].shape == (s.num_tokens, 3)
        assert s.num_tokens <= s.frames * cfg.native_tokens
    held = sum(int(s.sizes.sum()) for s in segs)
    assert held + st_.evicted_size == st_.frames_seen * cfg.native_tokens
    assert st_.frames + st_.frames_evicted == st_.frames_seen
    assert len(mem.long_term()) <= cfg.long_term
    for tier, stats in zip(cfg.tiers, st_.tiers[1:], strict=True):
        assert stats.tokens <= tier.capacity


@settings(max_examples=150, deadline=None)
@given(streams())
def test_invariants_hold_after_every_frame(case: tuple[HiCoSettings, list[float], int]) -> None:
    cfg, times, seed = case
    feed(cfg, times, seed)


@settings(max_examples=30, deadline=None)
@given(streams())
def test_deterministic(case: tuple[HiCoSettings, list[float], int]) -> None:
    cfg, times, seed = case
    a, b = feed(cfg, times, seed, check=False), feed(cfg, times, seed, check=False)
    sa, sb = a.segments(), b.segments()
    assert [(s.id, s.start, s.end, s.tier) for s in sa] == [(s.id, s.start, s.end, s.tier) for s in sb]
    for x, y in zip(sa, sb, strict=True):
        assert torch.equal(x.tokens, y.tokens)
        assert torch.equal(x.sizes, y.sizes)
        assert torch.equal(x.times, y.times)
    assert [(r.start, r.end, r.size) for r in a.long_term()] == [(r.start, r.end, r.size) for r in b.long_term()]


def test_tiers_fill_in_order_and_evict_to_long_term() -> None:
    cfg = HiCoSettings.for_budget(1024, 16)  # the tiny model: 16 native tokens per frame
    assert cfg.native_max() == 7 * 16
    assert [t.capacity for t in cfg.tiers] == [256, 256, 384]  # whole 64-token segments; the rest to the oldest
    mem = feed(cfg, [float(i) for i in range(600)], 0)
    st_ = mem.stats()
    assert [t.tier for t in st_.tiers] == [0, 1, 2, 3]
    assert st_.tiers[0].frames == 4  # the recent ring, native
    # Steady state: every compressed segment holds 64 tokens; older tiers cover twice the frames.
    assert [s.num_tokens for s in mem.segments() if s.tier > 0] == [64] * sum(t.segments for t in st_.tiers[1:])
    assert [t.tokens_per_frame for t in st_.tiers] == [16, 16, 8, 4]
    assert st_.tiers[1].frames < st_.tiers[2].frames < st_.tiers[3].frames
    assert st_.long_term > 0
    assert st_.tokens <= 1024
    rec = mem.long_term()[0]
    assert rec.start == 0.0
    assert rec.frames == 16
    assert rec.size == 16 * 16
    assert rec.embedding.shape == (4,)
    # Spans of the tiers tile the memory: oldest tier first, no gaps between tiers' ranges.
    spans = [(t.start, t.end) for t in reversed(st_.tiers) if t.start is not None and t.end is not None]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
    assert st_.end == 599.0


def test_clip_level_merges_frames_jointly() -> None:
    cfg = HiCoSettings(1000, 8, (Tier(2, 100),), clip_frames=4, recent_frames=0)
    mem = HiCoMemory(cfg)
    frame = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    for t in range(4):
        mem.add_frame(frame, float(t))  # a still scene: identical frames
    (clip,) = mem.segments()
    assert (clip.tier, clip.frames, clip.num_tokens) == (1, 4, 8)
    assert int(clip.sizes.sum()) == 32
    mean = (clip.tokens * clip.sizes[:, None].float()).sum(0) / 32
    assert torch.allclose(mean, frame.mean(0), atol=1e-5)


def test_rejects_bad_input_and_infeasible_settings() -> None:
    mem = HiCoMemory(HiCoSettings.for_budget(1024, 16))
    mem.add_frame(torch.zeros(16, 4), 1.0)
    with pytest.raises(ValueError, match="not after"):
        mem.add_frame(torch.zeros(16, 4), 1.0)
    with pytest.raises(ValueError, match="expected"):
        mem.add_frame(torch.zeros(15, 4), 2.0)
    with pytest.raises(ValueError, match="budget"):
        HiCoSettings(100, 16, (Tier(16, 128),), recent_frames=0)
    with pytest.raises(ValueError, match="capacity"):
        HiCoSettings.for_budget(200, 16)
