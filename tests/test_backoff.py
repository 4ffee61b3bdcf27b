"""stream/backoff.py: reconnection delays."""

from __future__ import annotations

import pytest

from stream.backoff import Backoff


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(base=0.5, cap=4.0, jitter=0.5, rand=lambda: 0.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_backoff_jitter_shortens_within_its_fraction() -> None:
    values = iter([0.0, 0.5, 0.999])
    b = Backoff(base=1.0, cap=1.0, jitter=0.4, rand=lambda: next(values))
    assert [round(b.next(), 4) for _ in range(3)] == [1.0, 0.8, 0.6004]


def test_backoff_survives_a_long_outage() -> None:
    b = Backoff(base=0.5, cap=8.0, rand=lambda: 0.0)
    assert [b.next() for _ in range(2000)][-1] == 8.0


@pytest.mark.parametrize(("base", "cap", "jitter"), [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.5)])
def test_backoff_rejects_bad_settings(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        Backoff(base=base, cap=cap, jitter=jitter)
