"""HiCo memory invariants over arbitrary frame sequences, timestamps, wall clocks and layouts (hypothesis)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.hico import HiCoMemory, HiCoSettings, Tier
from memory.segment import Segment


@st.composite
def configs(draw: st.DrawFn) -> HiCoSettings:
    native = draw(st.integers(1, 12))
    frames = [draw(st.integers(1, 5))]
    for _ in range(draw(st.integers(0, 2))):
        frames.append(frames[-1] * draw(st.integers(2, 4)))
    tiers = []
    for i, f in enumerate(frames):
        group = frames[i + 1] // f if i + 1 < len(frames) else 1
        keep = draw(st.integers(0, 3))
        tiers.append(Tier(f, draw(st.integers(1, 12)), keep, max(1, keep + group - 1 + draw(st.integers(0, 3)))))
    probe = HiCoSettings(10**9, native, tuple(tiers), draw(st.integers(0, 3)))
    return HiCoSettings(
        probe.max_tokens() + draw(st.integers(0, 20)),
        native,
        probe.tiers,
        probe.recent_frames,
        draw(st.integers(0, 6)),
        draw(st.sampled_from([1, 2])),
    )


Stream = tuple[HiCoSettings, list[float], list[float | None], int]


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    cfg = draw(configs())
    gaps = draw(st.lists(st.floats(0.001, 30.0, allow_nan=False), min_size=0, max_size=120))
    t0 = draw(st.floats(0.0, 1e5, allow_nan=False))
    times, t = [], t0
    for g in gaps:
        if t + g > t:  # a gap too small to advance a large float is skipped
            t += g
            times.append(t)
    # Wall clocks: unknown for some frames, and free to step back (NTP, a camera reset).
    base = draw(st.floats(1.7e9, 1.8e9, allow_nan=False))
    walls = [None if draw(st.booleans()) and draw(st.booleans()) else base + t + draw(st.floats(-5, 5)) for t in times]
    return cfg, times, walls, draw(st.integers(0, 2**31 - 1))


def frame(cfg: HiCoSettings, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    tokens = torch.randn(cfg.native_tokens, 4, generator=g)
    return tokens, {"pos": torch.arange(cfg.native_tokens).unsqueeze(1).repeat(1, 3)}


def feed(case: Stream, check: bool = True) -> tuple[HiCoMemory, list[Segment]]:
    """Feed the stream frame by frame; returns the memory and the clips ``add_frame`` returned."""
    cfg, times, walls, seed = case
    g = torch.Generator().manual_seed(seed)
    mem = HiCoMemory(cfg)
    clips: list[Segment] = []
    clock: dict[float, float | None] = {}  # stream time -> the wall clock the memory should have kept
    latest: float | None = None
    for t, wall in zip(times, walls, strict=True):
        tokens, extras = frame(cfg, g)
        clip = mem.add_frame(tokens, t, extras, wall=wall)
        if wall is not None:
            latest = wall if latest is None else max(latest, wall)
        clock[t] = None if wall is None else latest
        if clip is not None:
            clips.append(clip)
        if check:
            check_invariants(mem, cfg, clock)
    return mem, clips


def check_invariants(mem: HiCoMemory, cfg: HiCoSettings, clock: dict[float, float | None] | None = None) -> None:
    segs = mem.segments()
    st_ = mem.stats()
    assert st_.tokens == sum(s.num_tokens for s in segs) <= cfg.max_tokens() <= cfg.budget
    for a, b in itertools.pairwise(segs):
        assert a.end < b.start, "segments overlap or are out of order"
    for s in segs:
        assert s.start <= s.end
        assert bool((s.times >= s.start).all())
        assert bool((s.times <= s.end).all())
        assert s.extras["pos"].shape == (s.num_tokens, 3)
        assert s.num_tokens <= s.frames * cfg.native_tokens
        if clock is not None:  # a segment's wall range is its first and last frame's (held) wall clock
            assert (s.wall_start, s.wall_end) == (clock[s.start], clock[s.end])
    walls = [w for s in segs for w in (s.wall_start, s.wall_end) if w is not None]
    assert walls == sorted(walls), "wall clocks go backwards"
    held = sum(int(s.sizes.sum()) for s in segs)
    assert held + st_.evicted_size == st_.frames_seen * cfg.native_tokens
    assert st_.frames + st_.frames_evicted == st_.frames_seen
    assert len(mem.long_term()) <= cfg.long_term
    for tier, stats in zip(cfg.tiers, st_.tiers[1:], strict=True):
        assert stats.segments <= tier.capacity


@settings(max_examples=150, deadline=None)
@given(streams())
def test_invariants_hold_after_every_frame(case: Stream) -> None:
    cfg, times, _, _ = case
    mem, clips = feed(case)
    # Every clip came back from add_frame exactly once, in order: an archive of them misses nothing.
    assert all(c.tier == 1 and c.frames == cfg.clip_frames for c in clips)
    assert [c.start for c in clips] == times[: len(clips) * cfg.clip_frames : cfg.clip_frames]
    assert len(times) - len(clips) * cfg.clip_frames == mem.stats().tiers[0].frames


@settings(max_examples=30, deadline=None)
@given(streams())
def test_deterministic(case: Stream) -> None:
    (a, _), (b, _) = feed(case, check=False), feed(case, check=False)
    assert_same(a.segments(), b.segments(), ids=True)
    assert [(r.start, r.end, r.size) for r in a.long_term()] == [(r.start, r.end, r.size) for r in b.long_term()]


def assert_same(sa: tuple[Segment, ...], sb: tuple[Segment, ...], *, ids: bool) -> None:
    key = [(s.start, s.end, s.tier, s.frames, s.wall_start, s.wall_end) for s in sa]
    assert key == [(s.start, s.end, s.tier, s.frames, s.wall_start, s.wall_end) for s in sb]
    if ids:
        assert [s.id for s in sa] == [s.id for s in sb]
    for x, y in zip(sa, sb, strict=True):
        assert torch.equal(x.tokens, y.tokens)
        assert torch.equal(x.sizes, y.sizes)
        assert torch.equal(x.times, y.times)
        assert x.extras.keys() == y.extras.keys()
        assert all(torch.equal(x.extras[k], y.extras[k]) for k in x.extras)


@settings(max_examples=60, deadline=None)
@given(streams(), st.integers(0, 40))
def test_replaying_the_clips_rebuilds_the_memory(case: Stream, skip: int) -> None:
    cfg = case[0]
    live, clips = feed(case, check=False)
    replayed = HiCoMemory(cfg)
    for clip in clips:
        replayed.add_clip(clip)
        check_invariants(replayed, cfg)
    # The same state as live ingest, but for the native frames still waiting for a clip and the ids.
    assert_same(replayed.segments(), tuple(s for s in live.segments() if s.tier > 0), ids=False)
    assert [(r.start, r.end, r.size) for r in replayed.long_term()] == [
        (r.start, r.end, r.size) for r in live.long_term()
    ]
    assert replayed.stats().frames_seen == live.stats().frames_seen - live.stats().tiers[0].frames
    # Replaying only the newest clips (retention dropped the rest) keeps every invariant too.
    partial = HiCoMemory(cfg)
    for clip in clips[skip:]:
        partial.add_clip(clip)
        check_invariants(partial, cfg)


def test_add_clip_refuses_what_does_not_fit() -> None:
    cfg = HiCoSettings(10_000, 8, (Tier(4, 8, 1, 8), Tier(8, 4, 1, 4)))
    mem = HiCoMemory(cfg)
    clips = [c for t in range(12) if (c := mem.add_frame(torch.randn(8, 4), float(t), wall=100.0 + t)) is not None]
    assert [c.start for c in clips] == [0.0, 4.0, 8.0]
    assert (clips[1].wall_start, clips[1].wall_end) == (104.0, 107.0)
    fresh = HiCoMemory(cfg)
    fresh.add_clip(clips[0])
    with pytest.raises(ValueError, match="not after"):
        fresh.add_clip(clips[0])
    with pytest.raises(ValueError, match="tier 1 clip"):
        fresh.add_clip(replace(clips[1], frames=3))
    with pytest.raises(ValueError, match="sizes"):
        fresh.add_clip(replace(clips[1], sizes=clips[1].sizes + 1))
    fresh.add_frame(torch.randn(8, 4), 20.0)
    with pytest.raises(ValueError, match="waiting"):
        fresh.add_clip(replace(clips[2], start=30.0, end=33.0))


def test_the_default_layout_tiers_fill_in_order() -> None:
    cfg = HiCoSettings.fit(1024, 16)  # the tiny model: 16 native tokens per frame, already clip detail
    assert cfg.clip_frames == 1 and cfg.native_max() == 0
    assert [t.tokens_per_frame for t in cfg.tiers] == [16, 4, 1, 1 / 4, 1 / 16, 1 / 64]
    mem, _ = feed((cfg, [float(i) for i in range(6000)], [None] * 6000, 0), check=False)
    check_invariants(mem, cfg)
    st_ = mem.stats()
    assert [t.tier for t in st_.tiers] == [0, 1, 2, 3, 4, 5, 6]
    assert st_.tiers[0].frames == 0  # no native frames wait: each frame is its own clip
    assert all(t.segments >= spec.keep for t, spec in zip(st_.tiers[1:], cfg.tiers, strict=True))
    assert all(s.num_tokens == 16 for s in mem.segments())
    assert st_.long_term > 0
    rec = mem.long_term()[0]
    assert (rec.start, rec.frames, rec.size, rec.embedding.shape) == (0.0, 1024, 1024 * 16, (4,))
    # Spans of the tiers tile the memory: oldest tier first, no gaps between tiers' ranges.
    spans = [(t.start, t.end) for t in reversed(st_.tiers) if t.start is not None and t.end is not None]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
    assert st_.end == 5999.0
    assert st_.frames >= cfg.steady_frames() >= 3600


def test_clip_level_merges_frames_jointly() -> None:
    cfg = HiCoSettings(1000, 8, (Tier(4, 8, 0, 100),))
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
    mem = HiCoMemory(HiCoSettings.fit(1024, 16))
    mem.add_frame(torch.zeros(16, 4), 1.0)
    with pytest.raises(ValueError, match="not after"):
        mem.add_frame(torch.zeros(16, 4), 1.0)
    with pytest.raises(ValueError, match="expected"):
        mem.add_frame(torch.zeros(15, 4), 2.0)
    with pytest.raises(ValueError, match="budget"):
        HiCoSettings(100, 16, (Tier(4, 64, 0, 2),))
    with pytest.raises(ValueError, match="capacity"):
        HiCoSettings(10**6, 16, (Tier(4, 64, 2, 4), Tier(16, 64, 0, 4)))  # 4 clips make a group: keep + 3 at least
    with pytest.raises(ValueError, match="multiple"):
        HiCoSettings(10**6, 16, (Tier(4, 64, 0, 4), Tier(6, 64, 0, 4)))
    with pytest.raises(ValueError, match="too small"):
        HiCoSettings.fit(200, 64)  # 3 native frames waiting for a clip are 192 tokens already
