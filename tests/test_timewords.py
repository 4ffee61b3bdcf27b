"""engine/timewords.py: time references in questions become wall-clock windows (dateparser underneath)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from engine.timewords import TimeReader

TZ = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 1, 15, 30, tzinfo=TZ)


def at(h: int, m: int = 0, day: int = 1) -> float:
    return datetime(2026, 12, day, h, m, tzinfo=TZ).timestamp()


@pytest.mark.parametrize(
    ("question", "start", "end"),
    [
        ("What happened at 14:05?", at(14, 4), at(14, 6)),
        ("what did the camera see at 2:05 pm", at(14, 4), at(14, 6)),
        ("anyone at the door at 2 pm?", at(14), at(15)),
        ("Did anyone come by around 2 pm?", at(13, 45), at(14, 15)),
        ("What was going on 10 minutes ago?", at(15, 19), at(15, 21)),
        ("what happened an hour ago", at(14, 24), at(14, 36)),
        ("Did the lights go off in the last minute?", at(15, 29), at(15, 30)),
        ("anything in the past 5 minutes?", at(15, 25), at(15, 30)),
        ("What happened in the last hour?", at(14, 30), at(15, 30)),
        ("did anyone come to the door this morning?", at(5), at(12)),
        ("anything yesterday evening?", at(17, day=1) - 86400, at(22, day=1) - 86400),
        ("what happened between 9 and 10 am", at(9), at(10)),
        ("what happened between 9:30 and 10:15", at(9, 30), at(10, 15)),
        ("from 14:00 to 14:30, who was there?", at(14), at(14, 30)),
        ("When did the banner last appear before 14:00?", at(12), at(14)),
        ("anything since noon?", at(12), at(15, 30)),
        ("what happened at 16:00?", at(16, day=0 + 1) - 86400 - 60, at(16, day=1) - 86400 + 60),
        ("what happened yesterday?", at(0, day=0 + 1) - 86400, at(0, day=1)),
    ],
)
def test_time_references_become_windows(question: str, start: float, end: float) -> None:
    window = TimeReader().window(question, NOW)
    assert window is not None, question
    assert window.start == pytest.approx(start) and window.end == pytest.approx(end), (
        question,
        datetime.fromtimestamp(window.start, TZ),
        datetime.fromtimestamp(window.end, TZ),
        window.words,
    )


@pytest.mark.parametrize(
    "question",
    ["What is happening now?", "Is the star visible?", "What color is the ball?", "How many people are there?"],
)
def test_questions_without_a_time_reference_have_no_window(question: str) -> None:
    assert TimeReader().window(question, NOW) is None


def test_now_must_carry_a_time_zone() -> None:
    with pytest.raises(ValueError, match="timezone"):
        TimeReader().window("at 14:05", datetime(2026, 12, 1, 15, 30))


@pytest.mark.parametrize(
    ("question", "point"),
    [
        ("What happened at 14:05?", at(14, 5)),
        ("Was the banner showing at 14:05:30?", at(14, 5) + 30),
        ("What was going on 10 minutes ago?", at(15, 20)),
        ("Did anyone come by around 2 pm?", None),
        ("anyone at the door at 2 pm?", None),
        ("did anyone come to the door this morning?", None),
        ("what happened between 9 and 10 am", None),
        ("When did the banner last appear before 14:00?", None),
    ],
)
def test_a_moment_named_to_the_minute_or_finer_is_kept_as_the_point(question: str, point: float | None) -> None:
    window = TimeReader().window(question, NOW)
    assert window is not None
    assert window.point == (pytest.approx(point) if point is not None else None), question
