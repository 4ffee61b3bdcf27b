"""The pure parts of watches: the detector's hysteresis, min_duration and cooldown; the schedule in stream
time; the background slots (one evaluation per watch, newest wins), the barrier that keeps a question
behind at most one evaluation, and the bounded generations."""

from __future__ import annotations

import pytest

from engine.schedule import Background, Generation
from engine.watches import HYSTERESIS, Detector, Schedule, WatchSpec, check


def run(d: Detector, readings: list[tuple[float, float]]) -> list[tuple[float, str]]:
    """Feed ``(t, score)`` pairs; the changes with their times."""
    out: list[tuple[float, str]] = []
    for t, p in readings:
        change = d.observe(p, t)
        if change is not None:
            out.append((t, change))
    return out


def test_fires_on_the_rising_edge_and_ends_when_it_stops_holding() -> None:
    d = Detector(0.6, min_duration_s=0, cooldown_s=0)
    assert run(d, [(0, 0.1), (1, 0.7), (2, 0.9), (3, 0.8), (4, 0.2), (5, 0.1)]) == [(1, "fire"), (4, "end")]
    assert d.state == "idle"


def test_hysteresis_a_score_wavering_around_the_threshold_does_not_flap() -> None:
    d = Detector(0.6, min_duration_s=0, cooldown_s=0)
    low = 0.6 - HYSTERESIS + 0.01  # under the threshold, above the release point
    assert run(d, [(0, 0.65), (1, low), (2, 0.62), (3, low), (4, 0.61)]) == [(0, "fire")]
    assert d.state == "firing"
    assert run(d, [(5, 0.6 - HYSTERESIS - 0.01)]) == [(5, "end")]


def test_min_duration_the_condition_must_hold_that_long_first() -> None:
    d = Detector(0.6, min_duration_s=3, cooldown_s=0)
    # A blip shorter than min_duration never fires and ends silently.
    assert run(d, [(0, 0.9), (2, 0.9), (3, 0.1)]) == []
    assert run(d, [(10, 0.9), (11, 0.9), (12, 0.9), (13, 0.9), (14, 0.9)]) == [(13, "fire")]


def test_cooldown_no_second_alert_within_it_then_one_if_it_still_holds() -> None:
    d = Detector(0.6, min_duration_s=0, cooldown_s=10)
    assert run(d, [(0, 0.9), (1, 0.1), (2, 0.9), (3, 0.1)]) == [(0, "fire"), (1, "end")]  # 2: suppressed
    assert d.state == "idle"
    assert run(d, [(5, 0.9), (8, 0.9), (10, 0.9), (11, 0.9)]) == [(10, "fire")]  # held past the cooldown


def test_a_stored_last_alert_keeps_the_cooldown_across_a_restart_and_a_clock_that_went_back_resets_it() -> None:
    d = Detector(0.6, min_duration_s=0, cooldown_s=60, last_alert=100.0)
    assert run(d, [(120, 0.9)]) == []
    assert run(d, [(161, 0.9)]) == [(161, "fire")]
    fresh = Detector(0.6, min_duration_s=0, cooldown_s=60, last_alert=500.0)
    assert run(fresh, [(3, 0.9)]) == [(3, "fire")]  # the memory started over: 500 means nothing now


def test_nan_scores_are_ignored() -> None:
    d = Detector(0.6, 0, 0)
    assert run(d, [(0, float("nan")), (1, 0.9)]) == [(1, "fire")]


def test_schedule_is_in_stream_time() -> None:
    s = Schedule(5.0)
    due = [t for t in (0.0, 1.0, 4.9, 5.0, 6.0, 9.9, 10.0, 30.0, 31.0, 35.0) if s.due(t)]
    assert due == [0.0, 5.0, 10.0, 30.0, 35.0]
    assert s.due(2.0)  # the clock went back (a memory that started over): due again at once


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (WatchSpec("cam", " "), "condition"),
        (WatchSpec("cam", "x" * 301), "condition"),
        (WatchSpec("cam", "a dog", every_s=0.1), "every_s"),
        (WatchSpec("cam", "a dog", cooldown_s=-1), "cooldown_s"),
        (WatchSpec("cam", "a dog", threshold=0.1), "threshold"),
    ],
)
def test_check_names_what_is_wrong(spec: WatchSpec, problem: str) -> None:
    assert any(p.startswith(problem) for p in check(spec))
    assert check(WatchSpec("cam", "a dog")) == []


def test_one_evaluation_waits_per_watch_the_newest_replacing_the_older() -> None:
    b = Background()
    assert b.due(1) and b.due(2)
    assert not b.due(1)  # replaced: the caller counts it as dropped
    assert b.evaluations_waiting == 2
    assert b.next_evaluation() == 2 and b.next_evaluation() == 1  # 1 was re-queued behind 2
    b.due(3)
    b.forget(3)
    assert b.evaluations_waiting == 0


def test_the_barrier_lets_a_waiting_question_see_at_most_one_evaluation() -> None:
    b = Background()
    for w in (1, 2, 3):
        b.due(w)
    assert b.evaluation_ready([])  # nobody waits
    b.next_evaluation()
    b.evaluated(newest_seq=7)  # questions 1..7 were given out; 6 and 7 wait
    assert not b.evaluation_ready([6, 7])  # they have seen one evaluation: none more until they are taken
    assert not b.evaluation_ready([7, 8])
    assert b.evaluation_ready([8, 9])  # arrived after it ended: may see one
    assert b.evaluation_ready([])


def test_generations_are_bounded_and_a_cancelled_one_goes_back_first() -> None:
    b = Background(max_generations=2)
    a, c, d = (Generation("caption", s, "p") for s in "acd")
    assert b.add(a) is None and b.add(c) is None
    assert b.add(d) is a and b.dropped_generations == 1  # the oldest goes
    job = b.next_generation()
    assert job is c
    job.cancel.set()
    b.put_back(job)
    again = b.next_generation()
    assert again is c and not again.cancel.is_set()  # a fresh cancel flag
    b.drop_stream("d")
    assert b.next_generation() is None
