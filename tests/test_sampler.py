"""stream/sampler.py: keeping frames by stream time."""

from __future__ import annotations

import pytest

from stream.sampler import Sampler


def test_sampler_keeps_one_frame_per_period_from_a_30fps_source() -> None:
    s = Sampler(1.0)
    kept = [n / 30 for n in range(30 * 10) if s.due(n / 30)]
    assert len(kept) == 10
    assert kept[:3] == pytest.approx([0.0, 1.0, 2.0], abs=1 / 30)


def test_sampler_skips_missed_slots_and_restarts_after_a_clock_jump_back() -> None:
    s = Sampler(2.0)
    assert s.due(0.0) and not s.due(0.2) and s.due(0.5)
    assert s.due(10.0) and not s.due(10.1) and s.due(10.5)  # a gap: no burst of catch-up frames
    assert s.due(3.0)  # the camera restarted its clock


def test_sampler_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Sampler(0)
