"""What the demo scene shows, asked and answered: the ground truth the demo model learns and is graded on.

The demo source (:mod:`stream.demo`) is deterministic in stream time, so every question about it has one
right answer computed from its script (:data:`stream.demo.EVENTS`), never from a model. This module
writes the questions a user asks, in several wordings, the answers the model is trained to give, and
the graders :mod:`bench.quality` and the tests use. Frames are sampled at whole seconds (1 fps, the
server's default), so "the frame at t" is the scene at stream second ``t``.

Question kinds:

- about now (the newest frame in memory): ``star``, ``lights``, ``banner``, ``colour``, ``describe``,
  ``time``;
- about the past the memory holds: ``past_seen`` (did X happen in the last N seconds), ``past_last``
  (when did X last appear), ``past_count`` (how many times in the last N minutes), ``past_at`` (was X
  showing at a given time; what recall by time serves when that time has left memory).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stream.demo import CYCLE_S, EVENTS

NOW_KINDS = ("star", "lights", "banner", "colour", "describe", "time")
PAST_KINDS = ("past_seen", "past_last", "past_count", "past_at")
KINDS = NOW_KINDS + PAST_KINDS

BANNER_TEXT = "PERSON AT DOOR"
YES, NO = " Yes.", " No."

#: The scripted events by the names questions use: (start, end) seconds into every minute.
EVENT_SPANS = {name: (e.start, e.end) for name, e in zip(("star", "dark", "banner"), EVENTS, strict=True)}


def shows(event: str, t: float) -> bool:
    """Whether the frame at stream second ``t`` shows ``event`` (``star``, ``dark`` or ``banner``)."""
    start, end = EVENT_SPANS[event]
    return start <= t % CYCLE_S < end


def occurrences(event: str, lo: float, hi: float) -> int:
    """How many separate showings of ``event`` have a sampled frame in ``(lo, hi]`` (whole seconds)."""
    seen: set[int] = set()
    t = int(lo) + 1
    while t <= hi:
        if shows(event, t):
            seen.add(int(t // CYCLE_S))
        t += 1
    return len(seen)


@dataclass(frozen=True, slots=True)
class Span:
    """A run of frames the model sees under one time label: stream seconds ``start..end``, and the label
    strings of both ends as the model reads them."""

    start: float
    end: float
    start_label: str
    end_label: str


@dataclass(frozen=True, slots=True)
class Question:
    """One question with its reference answer.

    ``check`` grades a model's answer text; ``answer`` is the exact text the model is trained to give
    (leading space, as after ``Assistant:``).
    """

    kind: str
    text: str
    answer: str
    check: Callable[[str], bool]
    asked_about: float  # the stream second the question is about (now, or the time asked), for ages


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9: ]+", " ", text.lower()).split("assistant")[0].strip()


def _yes_no(truth: bool) -> tuple[str, Callable[[str], bool]]:
    def check(answer: str) -> bool:
        words = _norm(answer).split()
        return bool(words) and words[0] == ("yes" if truth else "no")

    return (YES if truth else NO), check


_TIME = re.compile(r"\b(\d{1,2}):(\d\d):(\d\d)\b")


def label_seconds(label: str) -> int:
    """``H:MM:SS`` or ``HH:MM:SS`` as seconds of the day (or of the stream)."""
    h, m, s = (int(x) for x in label.split(":"))
    return h * 3600 + m * 60 + s


def _time_check(lo: str, hi: str) -> Callable[[str], bool]:
    """Right when the answer names a time within ``[lo, hi]`` (labels), the span the memory allows."""
    a, b = label_seconds(lo), label_seconds(hi)

    def check(answer: str) -> bool:
        m = _TIME.search(answer)
        return m is not None and a <= label_seconds(m.group(0)) <= b

    return check


class Asker:
    """Writes questions about one moment of one stream.

    Args:
        spans: what the model sees, oldest first: the memory's segments (and recalled clips), each as a
            :class:`Span`.
        now: the stream second of the newest frame.
        label: stream second -> the time label the model reads for it.
        start: the first stream second the stream had (nothing before it happened).
    """

    def __init__(self, spans: Sequence[Span], now: float, label: Callable[[float], str], start: float) -> None:
        self.spans = list(spans)
        self.now = now
        self.label = label
        self.start = start

    # --- about now --------------------------------------------------------------------------------
    def star(self, rng: random.Random) -> Question:
        text = rng.choice(
            ["Is the star visible?", "Is there a star?", "Can you see the yellow star?", "Is the star there?"]
        )
        answer, check = _yes_no(shows("star", self.now))
        return Question("star", text, answer, check, self.now)

    def lights(self, rng: random.Random) -> Question:
        dark = shows("dark", self.now)
        if rng.random() < 0.3:
            text = rng.choice(["Is it dark?", "Are the lights off?"])
            answer, check = _yes_no(dark)
        else:
            text = rng.choice(["Are the lights on?", "Are the lights on now?", "Is the room lit?"])
            answer, check = _yes_no(not dark)
        return Question("lights", text, answer, check, self.now)

    def banner(self, rng: random.Random) -> Question:
        up = shows("banner", self.now)
        if rng.random() < 0.3:
            text = rng.choice(["Is there a banner?", "Is the banner showing?"])
            answer, yes_no = _yes_no(up)
            return Question("banner", text, answer, yes_no, self.now)
        text = rng.choice(["What does the banner say?", "What does the sign say?", "Is anyone at the door?"])
        answer = f" It says {BANNER_TEXT}." if up else " There is no banner."

        def check(reply: str) -> bool:
            return (BANNER_TEXT.lower() in reply.lower()) == up and (up or "no" in _norm(reply).split())

        return Question("banner", text, answer, check, self.now)

    def colour(self, rng: random.Random) -> Question:
        shape, colour = rng.choice([("ball", "red"), ("square", "green"), ("triangle", "blue")])
        text = rng.choice([f"What color is the {shape}?", f"What colour is the {shape}?"])
        answer = f" {colour.capitalize()}."

        def check(reply: str) -> bool:
            return _norm(reply).split()[:1] == [colour]

        return Question("colour", text, answer, check, self.now)

    def describe(self, rng: random.Random) -> Question:
        dark, star, banner = (shows(e, self.now) for e in ("dark", "star", "banner"))
        lights = "The lights are off." if dark else "The lights are on."
        star_s = "A yellow star is in the top right corner." if star else "There is no star."
        banner_s = f"A red banner reads {BANNER_TEXT}." if banner else "There is no banner."
        if rng.random() < 0.3:  # the sentence a watch asks for when it fires (engine/watches.py DESCRIBE)
            subject, sentence = rng.choice(
                [("the lights are off", lights), ("a star is visible", star_s), ("someone is at the door", banner_s)]
            )
            text = f"In one short sentence, describe what the most recent frames show about this: {subject}."
            return Question("describe", text, " " + sentence, lambda reply: sentence.lower() in reply.lower(), self.now)
        text = rng.choice(["What is happening?", "Describe the scene.", "What do you see?", "What is going on now?"])
        answer = " " + " ".join(s for s in (lights, star_s if star else "", banner_s if banner else "") if s)

        def check(reply: str) -> bool:
            got = reply.lower()
            return lights.lower() in got and ("yellow star" in got) == star and (BANNER_TEXT.lower() in got) == banner

        return Question("describe", text, answer, check, self.now)

    def time(self, rng: random.Random) -> Question:
        text = rng.choice(["What time is it?", "What is the time now?"])
        now = self.spans[-1].end_label if self.spans else self.label(self.now)
        return Question("time", text, f" It is {now}.", _time_check(now, now), self.now)

    # --- about the past ---------------------------------------------------------------------------
    def past_seen(self, rng: random.Random, seconds: int | None = None) -> Question:
        n = seconds or rng.choice([10, 15, 20, 30])
        event = rng.choice(["star", "dark", "banner"])
        text = {
            "star": f"Did the star appear in the last {n} seconds?",
            "dark": f"Did the lights go off in the last {n} seconds?",
            "banner": f"Did the banner appear in the last {n} seconds?",
        }[event]
        lo = max(self.now - n, self.start - 1)
        answer, check = _yes_no(occurrences(event, lo, self.now) > 0)
        return Question("past_seen", text, answer, check, self.now - n / 2)

    def past_last(self, rng: random.Random) -> Question | None:
        event = rng.choice(["star", "dark", "banner"])
        noun = {"star": "the star last appear", "dark": "the lights last go off", "banner": "the banner last appear"}
        text = f"When did {noun[event]}?"
        if shows(event, self.now):
            answer = " They are off now." if event == "dark" else " It is showing now."

            def now_check(reply: str) -> bool:
                return "now" in _norm(reply).split()

            return Question("past_last", text, answer, now_check, self.now)
        # The newest span (in memory, not recalled: those come after it, older) showing the event.
        last = None
        for span in self.spans:
            showing = span.end <= self.now and any(shows(event, t) for t in _seconds(span))
            if showing and (last is None or span.end > last.end):
                last = span
        if last is None:
            return None  # the memory never saw it: not a fair question
        first_after = max(t for t in _seconds(last) if shows(event, t))
        check = _time_check(last.start_label, last.end_label)
        return Question("past_last", text, f" At {last.end_label}.", check, first_after)

    def past_count(self, rng: random.Random, minutes: int | None = None) -> Question:
        n = minutes or rng.choice([2, 3, 5])
        event = rng.choice(["star", "dark", "banner"])
        what = {"star": "the star appear", "dark": "the lights go off", "banner": "the banner appear"}[event]
        text = f"How many times did {what} in the last {n} minutes?"
        count = occurrences(event, max(self.now - 60 * n, self.start - 1), self.now)
        answer = f" {count} time{'s' if count != 1 else ''}."

        def check(reply: str) -> bool:
            m = re.search(r"\d+", reply)
            return m is not None and int(m.group(0)) == count

        return Question("past_count", text, answer, check, self.now - 30 * n)

    def past_at(self, rng: random.Random, t: float | None = None) -> Question:
        """Was X showing at a moment (``t``, else a random one): asked half the time about an event that
        was showing then (the nearest showing within 30 s of ``t`` when none is at ``t`` itself), so yes
        and no are equally likely."""
        when = float(t if t is not None else rng.randint(int(self.start), int(self.now)))
        events = ["star", "dark", "banner"]
        if rng.random() < 0.5:
            near = [u for d in range(31) for u in (when - d, when + d) if self.start <= u <= self.now]
            when = next((u for u in near if any(shows(e, u) for e in events)), when)
            showing = [e for e in events if shows(e, when)]
            event = rng.choice(showing or events)
        else:
            event = rng.choice([e for e in events if not shows(e, when)] or events)
        at = self.label(when)
        text = {
            "star": f"Was the star visible at {at}?",
            "dark": f"Were the lights off at {at}?",
            "banner": f"Was the banner showing at {at}?",
        }[event]
        answer, check = _yes_no(shows(event, when))
        return Question("past_at", text, answer, check, when)

    def ask(self, kind: str, rng: random.Random) -> Question | None:
        """A question of ``kind`` (see the module doc), or None when there is no fair one."""
        q: Question | None = getattr(self, kind)(rng)
        return q


def _seconds(span: Span) -> range:
    return range(int(span.start), int(span.end) + 1)
