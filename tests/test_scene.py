"""The demo scene's ground truth (train/scene.py), which trains the demo model and grades it: it must agree
with what stream/demo.py draws, or every figure built on it is wrong."""

from __future__ import annotations

import random

from stream.demo import EVENTS, events_at
from train.scene import NO, YES, Asker, Span, occurrences, shows

NAMES = dict(zip(("star", "dark", "banner"), EVENTS, strict=True))


def label(t: float) -> str:
    return f"{int(t) // 3600:02d}:{int(t) // 60 % 60:02d}:{int(t) % 60:02d}"


def test_shows_is_what_the_demo_source_draws() -> None:
    for t in range(3600, 3720):
        drawn = events_at(float(t))
        for name, event in NAMES.items():
            assert shows(name, t) == (event in drawn), (name, t % 60)


def test_occurrences_count_separate_showings_with_a_sampled_frame() -> None:
    assert occurrences("star", 0, 60) == 1
    assert occurrences("star", 0, 180) == 3
    assert occurrences("banner", 54, 60) == 0  # (54, 60]: the banner ends at 55, exclusive
    assert occurrences("banner", 53, 60) == 1  # second 54 still shows it


def test_now_questions_follow_the_newest_frame() -> None:
    rng = random.Random(2)
    spans = [Span(float(t), float(t), label(t), label(t)) for t in range(3600, 3661)]
    for now, star, dark in ((3612, True, False), (3625, False, False), (3633, False, True)):
        asker = Asker(spans, float(now), label, 3600.0)
        assert asker.star(rng).answer == (YES if star else NO)
        lights = asker.lights(rng)
        assert lights.check(lights.answer) and not lights.check(NO if lights.answer == YES else YES)
        assert (lights.answer == YES) == (dark == ("off" in lights.text or "dark" in lights.text))


def test_past_at_asks_yes_and_no_equally_often() -> None:
    rng = random.Random(3)
    spans = [Span(float(t), float(t), label(t), label(t)) for t in range(3600, 7200)]
    asker = Asker(spans, 7199.0, label, 3600.0)
    answers = [asker.past_at(rng).answer for _ in range(400)]
    assert 160 < answers.count(YES) < 240
