"""Time references in a question, as a window of wall-clock time: "at 14:05", "around 2 pm", "10 minutes ago",
"this morning", "between 9 and 10", "in the last 5 minutes", "before 14:00", "yesterday evening".

The dates and times themselves are read by ``dateparser`` (a well-kept natural-language date parser); this
module only decides how wide a window each kind of reference means:

| reference | window |
|---|---|
| a time with minutes ("at 14:05", "2:05 pm") | that minute, +-1 minute |
| an hour ("at 2 pm") | that hour |
| "around" / "about" a time | +-15 minutes |
| "N minutes/hours ago" | +-1 minute (+-10 % of the distance for longer ago) |
| "in the last N minutes" / "the past hour" | from then until now |
| "between A and B", "from A to B" | A to B |
| "before X" / "until X" | the two hours before X |
| "after X" / "since X" | X until now |
| a part of the day ("this morning", "yesterday evening") | morning 05-12, afternoon 12-17, evening 17-22, night 22-05 |
| a day ("yesterday", "on Monday") | that day |

A time of day later than now means the last one that has passed (yesterday's). "Now" and questions without
a time reference give no window: they are about what the memory holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

import dateparser
from dateparser.date import DateDataParser
from dateparser.search import search_dates

PARTS_OF_DAY = {"morning": (5, 12), "afternoon": (12, 17), "evening": (17, 22), "night": (22, 29), "tonight": (17, 29)}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "ten": 10, "few": 3}
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LAST = re.compile(
    r"\b(?:last|past|previous)\s+(?:(\d+|a|an|one|two|three|four|five|six|ten|few)\s+)?(second|minute|hour|day)s?\b",
    re.IGNORECASE,
)
_RANGE = re.compile(r"\b(?:between|from)\s+(.+?)\s+(?:and|to|until|till|-)\s+(.+?)(?=[?.!,;]|$)", re.IGNORECASE)
_BOUND = re.compile(r"\b(before|until|till|after|since)\s+(.+?)(?=[?.!,;]|$)", re.IGNORECASE)
_AROUND = re.compile(r"\b(?:around|about|approximately|roughly|near)\s+$", re.IGNORECASE)
_MERIDIEM = re.compile(r"\b(am|pm|a\.m\.|p\.m\.)\b", re.IGNORECASE)
_NOW = re.compile(r"^\s*(?:right\s+)?now\s*$", re.IGNORECASE)
_CLOCK = re.compile(r"\d:\d\d|\d\s*(?:am|pm|a\.m\.|p\.m\.|o'?clock|h)\b|\bnoon\b|\bmidnight\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Wall-clock seconds since the epoch, and the words that set it."""

    start: float
    end: float
    words: str
    #: the moment named, when the words name one to the minute or less ("at 14:05:07", "10 minutes ago"):
    #: what is nearest it matters most. None for spans ("this morning", "between 9 and 10", "at 2 pm").
    point: float | None = None


class TimeReader:
    """Reads time references relative to ``now`` (a timezone-aware datetime in the viewer's time zone)."""

    def __init__(self) -> None:
        self._parser = DateDataParser(languages=["en"], settings={"PREFER_DATES_FROM": "past"})

    def window(self, question: str, now: datetime) -> TimeWindow | None:
        """The window of time ``question`` refers to, or None (see the module doc)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        for find in (self._last, self._range, self._bound):
            found = find(question, now)
            if found is not None:
                start, end, words = found
                return TimeWindow(start.timestamp(), end.timestamp(), words)
        point = self._point(question, now)
        if point is None:
            return None
        start, end, words, moment = point
        return TimeWindow(start.timestamp(), end.timestamp(), words, moment.timestamp() if moment else None)

    # --- readings --------------------------------------------------------------------------------
    def _last(self, q: str, now: datetime) -> tuple[datetime, datetime, str] | None:
        m = _LAST.search(q)
        if m is None:
            return None
        count = m.group(1)
        n = 1 if count is None else int(count) if count.isdigit() else _NUMBERS[count.lower()]
        return now - timedelta(seconds=n * _UNITS[m.group(2).lower()]), now, m.group(0)

    def _range(self, q: str, now: datetime) -> tuple[datetime, datetime, str] | None:
        m = _RANGE.search(q)
        if m is None:
            return None
        left, right = m.group(1), m.group(2)
        meridiem = _MERIDIEM.search(right)
        if meridiem and not _MERIDIEM.search(left) and re.fullmatch(r"\s*\d{1,2}(:\d\d)?\s*", left):
            left = f"{left} {meridiem.group(1)}"  # "between 9 and 10 am": both in the morning
        a, b = self._clock_time(left, now), self._clock_time(right, now)
        if a is None or b is None:
            return None
        if b <= a:
            a -= timedelta(days=1)  # "from 23:00 to 01:00"
        return a, b, m.group(0)

    def _bound(self, q: str, now: datetime) -> tuple[datetime, datetime, str] | None:
        m = _BOUND.search(q)
        if m is None:
            return None
        t = self._clock_time(m.group(2), now)
        if t is None:
            return None
        if m.group(1).lower() in ("before", "until", "till"):
            return t - timedelta(hours=2), t, m.group(0)
        return t, now, m.group(0)

    def _point(self, q: str, now: datetime) -> tuple[datetime, datetime, str, datetime | None] | None:
        found = search_dates(q, languages=["en"], settings=self._settings(now))
        for words, _ in found or []:
            if _NOW.match(words):
                continue
            reading = self._reading(words, now)
            if reading is None:
                continue
            start, end, moment = reading
            before = q[: q.find(words)] if words in q else ""
            if _AROUND.search(before):  # centred on the time named: "around 2 pm" is 13:45-14:15
                named = moment or start
                start, end = named - timedelta(minutes=15), named + timedelta(minutes=15)
            return start, min(end, now), words, moment
        return None

    # --- one reference ---------------------------------------------------------------------------
    def _settings(self, now: datetime) -> dict[str, object]:
        return {"RELATIVE_BASE": now.replace(tzinfo=None), "PREFER_DATES_FROM": "past"}

    def _reading(self, words: str, now: datetime) -> tuple[datetime, datetime, datetime | None] | None:
        """The window one reference (as found in the question) stands for, and the moment it names when
        it names one to the minute or finer."""
        text = words.lower()
        data = self._parser.get_date_data(words)
        t = dateparser.parse(words, languages=["en"], settings=self._settings(now))
        if t is None:
            return None
        t = t.replace(tzinfo=now.tzinfo)
        for part, (lo, hi) in PARTS_OF_DAY.items():
            if re.search(rf"\b{part}\b", text):
                day = t.date() if ("yesterday" in text or "today" in text or data.period == "day") else now.date()
                if "yesterday" not in text and lo * 3600 > _seconds_of_day(now):
                    day -= timedelta(days=1)  # "this evening" asked at 10:00 means yesterday's
                start = datetime.combine(day, time(0), now.tzinfo) + timedelta(hours=lo)
                return start, start + timedelta(hours=hi - lo), None
        if "ago" in text:
            distance = now - t
            slack = max(timedelta(minutes=1), distance * 0.1)
            return t - slack, t + slack, t
        if _CLOCK.search(text):
            t = self._today(t, now)
            if re.search(r"\d:\d\d", text):  # minutes given: that minute
                return t - timedelta(minutes=1), t + timedelta(minutes=1), t
            return t, t + timedelta(hours=1), None  # an hour: "at 2 pm", "noon"
        if data.period == "day" or "yesterday" in text or "today" in text:
            start = datetime.combine(t.date(), time(0), now.tzinfo)
            return start, start + timedelta(days=1), None
        return None

    def _clock_time(self, words: str, now: datetime) -> datetime | None:
        """A time of day ("14:00", "9 am", "noon") as the last such moment that has passed."""
        t = dateparser.parse(words.strip(), languages=["en"], settings=self._settings(now))
        if t is None:
            return None
        return self._today(t.replace(tzinfo=now.tzinfo), now)

    @staticmethod
    def _today(t: datetime, now: datetime) -> datetime:
        """A time of day on today's date, or yesterday's if it has not come yet today (dateparser may pick
        another date for a bare time)."""
        if abs((t.date() - now.date()).days) > 1 or t > now:
            t = datetime.combine(now.date(), t.timetz())
            if t > now:
                t -= timedelta(days=1)
        return t


def _seconds_of_day(t: datetime) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second
