"""The first rolling memory: budget, eviction order, invariants."""

from __future__ import annotations

import pytest
import torch

from memory import RollingMemory


def test_budget_holds_over_a_long_run_and_the_oldest_go_first() -> None:
    mem = RollingMemory(budget=100, low_water=0.75)
    for i in range(5000):
        mem.add_frame(torch.full((16, 4), float(i)), float(i))
        stats = mem.stats()
        assert stats.tokens <= 100
        assert stats.tokens == sum(s.num_tokens for s in mem.segments())
    segs = mem.segments()
    assert [s.start for s in segs] == sorted(s.start for s in segs)
    assert segs[-1].start == 4999.0
    assert mem.stats().frames_seen == 5000
    assert mem.stats().frames_evicted + mem.stats().frames == 5000
    ids = [s.id for s in segs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_eviction_happens_in_batches_down_to_the_low_water_mark() -> None:
    mem = RollingMemory(budget=64, low_water=0.5)
    for i in range(4):
        mem.add_frame(torch.zeros(16, 2), float(i))
    assert mem.stats().tokens == 64
    mem.add_frame(torch.zeros(16, 2), 4.0)  # over budget: evict down to 32
    assert mem.stats().tokens == 32
    assert [s.start for s in mem.segments()] == [3.0, 4.0]


def test_bad_input_is_refused_without_changing_memory() -> None:
    mem = RollingMemory(budget=32)
    mem.add_frame(torch.zeros(8, 2), 5.0)
    with pytest.raises(ValueError, match="before"):
        mem.add_frame(torch.zeros(8, 2), 4.0)
    with pytest.raises(ValueError, match="whole budget"):
        mem.add_frame(torch.zeros(33, 2), 6.0)
    assert mem.stats().tokens == 8 and mem.stats().frames_seen == 1
