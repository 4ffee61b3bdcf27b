"""Watches: a condition in words, asked of a stream's cached context again and again, that alerts when it
starts to hold. Pure: no asyncio, no threads, no clock reads — fed scores and stream times, it says what
happened, so every rule is a fast deterministic test.

A watch is evaluated as a yes/no question on the stream's cached prefix (``SupportsYesNo``: P(yes) against
P(no) as the next token, one short prefill, nothing generated) every ``every_s`` seconds of stream time.
:class:`Detector` turns those scores into episodes, with hysteresis:

- the condition **starts to hold** when the score reaches ``threshold``, and **stops holding** when it falls
  below ``threshold - HYSTERESIS`` (a score wavering around the threshold does not flap);
- an episode **fires** (one alert) once it has held ``min_duration_s``, unless the last alert was less than
  ``cooldown_s`` ago — then it fires when the cooldown has passed, if it still holds;
- an episode that fired **ends** when the condition stops holding (reported, so the alert can be closed);
  one that never fired ends silently.

Times are the stream's memory time (seconds; they continue past the archive after a restart), so a file
or the demo read faster than real time is watched exactly as it would be live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: Longest condition, in characters: a sentence; the yes/no question around it stays far inside any
#: model's context window.
MAX_CONDITION_CHARS = 300
#: Watches one stream may have; every one costs an evaluation each period on the one inference worker.
MAX_WATCHES_PER_STREAM = 16
#: Watches on the whole server.
MAX_WATCHES = 256
MIN_EVERY_S = 0.5
MAX_EVERY_S = 86_400.0
MAX_DURATION_S = 86_400.0  # min_duration_s and cooldown_s
DEFAULT_EVERY_S = 5.0
DEFAULT_COOLDOWN_S = 60.0
DEFAULT_THRESHOLD = 0.6
#: How far below the threshold the score must fall for the condition to stop holding.
HYSTERESIS = 0.15

#: The yes/no question a condition is asked as.
QUESTION = "Look at the most recent frame. Is this true: {condition}? Answer yes or no."
#: What an alert's description is asked with (generated after the alert, on the same cached prefix).
DESCRIBE = "In one short sentence, describe what the most recent frames show about this: {condition}."
#: What a stream's periodic caption is asked with.
CAPTION = "In one short sentence, describe what happened in the most recent frames."
#: Tokens a description or a caption may take.
DESCRIBE_TOKENS = 48

Origin = Literal["config", "api"]
State = Literal["idle", "pending", "firing"]


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What a watch asks, how often and how it alerts (validated by :func:`check`)."""

    stream: str
    condition: str
    every_s: float = DEFAULT_EVERY_S
    min_duration_s: float = 0.0
    cooldown_s: float = DEFAULT_COOLDOWN_S
    threshold: float = DEFAULT_THRESHOLD
    describe: bool = False  # a one-sentence description after each alert (alert_update)
    webhook: str | None = None  # also POST this watch's alerts here
    origin: Origin = "api"  # from the configuration file, or added at run time


def check(spec: WatchSpec) -> list[str]:
    """What is wrong with ``spec`` (empty when nothing is). The wire and the configuration file validate
    the same bounds on their own; this is the engine's last word."""
    problems = []
    if not spec.condition.strip() or len(spec.condition) > MAX_CONDITION_CHARS:
        problems.append(f"condition: 1-{MAX_CONDITION_CHARS} characters")
    if not MIN_EVERY_S <= spec.every_s <= MAX_EVERY_S:
        problems.append(f"every_s: {MIN_EVERY_S:g}-{MAX_EVERY_S:g} seconds")
    for name, value in (("min_duration_s", spec.min_duration_s), ("cooldown_s", spec.cooldown_s)):
        if not 0 <= value <= MAX_DURATION_S:
            problems.append(f"{name}: 0-{MAX_DURATION_S:g} seconds")
    if not HYSTERESIS < spec.threshold < 1:
        problems.append(f"threshold: between {HYSTERESIS:g} and 1")
    return problems


Change = Literal["fire", "end"]


class Detector:
    """One watch's episodes, from its scores (see the module doc)."""

    def __init__(
        self, threshold: float, min_duration_s: float, cooldown_s: float, *, last_alert: float | None = None
    ) -> None:
        self.threshold = threshold
        self.min_duration_s = min_duration_s
        self.cooldown_s = cooldown_s
        self.state: State = "idle"
        self.since: float | None = None  # when the current episode started to hold
        self.last_alert = last_alert  # stream time of the last alert (a stored one after a restart)
        self._last_t: float | None = None

    def observe(self, score: float, t: float) -> Change | None:
        """Take one evaluation (``score`` = P(yes) at stream time ``t``); returns ``"fire"`` when an alert is
        due, ``"end"`` when an episode that fired stops holding, else None."""
        if math.isnan(score):
            return None
        if (self._last_t is not None and t < self._last_t) or (self.last_alert is not None and t < self.last_alert):
            # The stream's clock went back (a memory started over): times before now mean nothing.
            self.last_alert = None
            self.since = t if self.state != "idle" else None
        self._last_t = t
        if self.state == "idle":
            if score < self.threshold:
                return None
            self.state, self.since = "pending", t
        elif score < self.threshold - HYSTERESIS:
            fired = self.state == "firing"
            self.state, self.since = "idle", None
            return "end" if fired else None
        if self.state == "pending" and self._may_fire(t):
            self.state = "firing"
            self.last_alert = t
            return "fire"
        return None

    def _may_fire(self, t: float) -> bool:
        assert self.since is not None
        if t - self.since < self.min_duration_s:
            return False
        return self.last_alert is None or t - self.last_alert >= self.cooldown_s


class Schedule:
    """When a watch is next due, in stream seconds: every ``every_s`` after the last time it was due."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.next_due: float | None = None  # None: due at the first frame seen

    def due(self, t: float) -> bool:
        """Whether an evaluation is due at stream time ``t`` (the newest frame in memory); if so, the next
        one is due ``every_s`` later. A clock that went back starts over."""
        if self.next_due is not None and t < self.next_due - self.every_s:
            self.next_due = None
        if self.next_due is not None and t < self.next_due:
            return False
        self.next_due = t + self.every_s
        return True
