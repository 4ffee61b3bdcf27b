"""What the engine tells the outside world: typed, immutable events.

The engine never shapes wire messages. It calls a question's ``reply`` with :data:`QuestionEvent` values
and a stream's subscribers with :class:`StreamStatus`; ``web/protocol.py`` alone turns them into JSON.
Every event is frozen, so it can cross from the inference thread to the event loop and be fanned out to
many clients without copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from errors import LivesightError


@dataclass(frozen=True, slots=True)
class TierInfo:
    """One memory tier: tier 0 is the native frames waiting for a clip, 1 the clips, 2.. older re-merged tiers."""

    tier: int
    tokens_per_frame: float  # below 1 for a tier whose segments merge across time
    tokens: int
    frames: int
    span: tuple[float, float] | None  # stream seconds it covers


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """What the on-disk archive holds for a stream."""

    clips: int
    bytes: int
    span: tuple[float, float] | None  # stream seconds, oldest clip to newest
    clock_span: tuple[str, str] | None  # the same as local ISO 8601 times, for live streams
    dropped: int  # clips not archived (queue full, disk failing)
    error: str | None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream as ``streams`` and ``status`` report it."""

    name: str
    source: str  # the URL without credentials
    state: str  # starting, live, reconnecting, offline, ended
    fps: float
    frames: int  # frames that reached memory
    dropped: int  # sampled frames lost before the model took them (replaced by newer ones, or failed)
    reconnects: int
    memory_tokens: int
    memory_frames: int
    memory_span: tuple[float, float] | None
    memory_tiers: tuple[TierInfo, ...]
    long_term: int
    last_frame_age_s: float | None
    error: str | None
    memory_clock_span: tuple[str, str] | None = None  # the in-context span as local ISO 8601 times (live)
    restored_frames: int = 0  # frames the memory was rebuilt with from the archive at start
    archive: ArchiveInfo | None = None  # None without --data


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A stream changed state (``info``), or was removed (``info`` is None)."""

    stream: str
    info: StreamInfo | None


@dataclass(frozen=True, slots=True)
class RecalledSpan:
    """An archived clip a question was given (stream seconds; local ISO 8601 times for live streams)."""

    start: float
    end: float
    clock_start: str | None
    clock_end: str | None
    frames: int


@dataclass(frozen=True, slots=True)
class AnswerContext:
    """The visual context a question was answered on (stream seconds and clock times, frames and tokens)."""

    start: float | None
    end: float | None
    frames: int
    tokens: int  # tokens of the cached context: visual tokens and their text headers
    visual_tokens: int
    guided: str | None  # "uniform" / "attention" when answered with question-guided dropping
    clock_start: str | None = None  # the span as local ISO 8601 times, for live streams
    clock_end: str | None = None
    turns: int = 0  # earlier turns of the conversation the question came with
    recalled: tuple[RecalledSpan, ...] = ()  # archived clips added after the cached context
    recall: str | None = None  # why: "time" (a window) or "content"; None when nothing was recalled
    detail: bool = False  # the newest frame was shown in detail
    #: tokens the answer was conditioned on (the cached context, earlier turns, the question) and tokens
    #: it generated; None where the model does not count them
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """Milliseconds from when the server received the question."""

    queue_ms: float
    ttft_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class Token:
    """A piece of a question's answer, as soon as it is generated."""

    question: str
    text: str


@dataclass(frozen=True, slots=True)
class Answered:
    """A question's whole answer; the last event of that question."""

    question: str
    text: str
    context: AnswerContext
    timing: Timing


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The question was cancelled before its answer was complete; the last event of that question."""

    question: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The question could not be answered; the last event of that question."""

    question: str
    error: LivesightError


@dataclass(frozen=True, slots=True)
class WatchInfo:
    """A watch as ``watches`` lists it: what it asks, how, and how it fares."""

    id: int
    stream: str
    condition: str
    every_s: float
    min_duration_s: float
    cooldown_s: float
    threshold: float
    describe: bool
    webhook: str | None  # the URL without credentials, query or fragment
    origin: str  # "config" (the configuration file) or "api" (added at run time)
    state: str  # idle, pending (holds, not alerted yet: min_duration_s or cooldown), firing (alerted, holds)
    score: float | None  # P(yes) at the last evaluation
    evaluated: str | None  # local ISO 8601 time of the last evaluation
    evaluated_stream_time: float | None
    evaluations: int  # evaluations run since the server started
    dropped: int  # evaluations that came due while the previous one still waited (replaced by it)
    errors: int  # evaluations that failed
    alerts: int  # alerts since the server started
    error: str | None  # the last evaluation's failure; None once one succeeds


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """A watch was added or changed state (``info``), or was removed (``info`` None)."""

    stream: str
    watch: int
    info: WatchInfo | None


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One entry of the timeline: an alert of a watch, or a stream's caption."""

    id: int
    kind: str  # "alert" or "caption"
    stream: str
    watch: int | None  # the watch that fired (alerts)
    condition: str | None  # its condition, as it was when it fired
    time: str  # local ISO 8601 time it started (the frame's capture time for live streams)
    stream_time: float | None  # stream seconds of the frame it was seen in
    ended: str | None  # when the condition stopped holding (alerts; None while it holds)
    ended_stream_time: float | None
    score: float | None  # P(yes) when it fired
    text: str | None  # the description (alerts with describe) or the caption
    snapshot: bool  # a JPEG of the frame is kept


@dataclass(frozen=True, slots=True)
class Alert:
    """A watch fired: pushed to the stream's subscribers (and webhooks) as soon as it is seen."""

    event: TimelineEvent

    @property
    def stream(self) -> str:
        return self.event.stream


@dataclass(frozen=True, slots=True)
class AlertUpdate:
    """An alert changed: its description is ready, or its condition stopped holding."""

    event: TimelineEvent

    @property
    def stream(self) -> str:
        return self.event.stream


QuestionEvent = Token | Answered | Cancelled | Failed
#: The events that end a question: after one of them, its id is free again.
FINAL = (Answered, Cancelled, Failed)

#: Receives a question's events on the event loop; must not block.
Reply = Callable[[QuestionEvent], None]
#: What a stream's subscribers hear: its state, its watches, their alerts.
StreamEvent = StreamStatus | WatchStatus | Alert | AlertUpdate
#: Receives a stream's events on the event loop; must not block.
StatusListener = Callable[[StreamEvent], None]
