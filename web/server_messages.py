"""Server messages as typed models: what the server sends, defined once for the server and its clients.

The server shapes these messages as plain dicts in :mod:`web.protocol` (fast, from the engine's events);
``tests/test_server_messages.py`` checks that every shape it makes validates against its model here, field
for field, so the two cannot drift. Clients (:mod:`livesight.client`) parse with :func:`parse`.

The models are lenient where a newer server may say more: fields they do not declare are kept
(``model_extra``) rather than refused, values such as ``state`` and ``code`` are plain strings, and
:func:`parse` returns None for a message type it does not know. Adding a server message is one model
here, added to :data:`ServerMessage`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# --- pieces ----------------------------------------------------------------------------------------------
class TierInfo(_Part):
    """One memory tier: 0 the frames waiting to form a clip, 1 the clips, 2.. older re-merged tiers."""

    tier: int
    tokens_per_frame: float  # below 1 in the deepest tiers (a token stands for several frames)
    tokens: int
    frames: int
    span: tuple[float, float] | None  # stream seconds it covers


class ArchiveInfo(_Part):
    """What the on-disk archive holds for a stream."""

    clips: int
    bytes: int
    span: tuple[float, float] | None  # stream seconds
    clock_span: tuple[str, str] | None  # local ISO 8601 times, for live streams
    dropped: int
    error: str | None


class StreamInfo(_Part):
    """A stream as ``streams`` lists it (``status`` carries the same fields, ``name`` as ``stream``)."""

    name: str
    source: str  # the URL without credentials
    state: str  # starting, live, reconnecting, offline, ended
    fps: float
    frames: int  # frames that reached memory
    dropped: int  # sampled frames replaced by newer ones before the model took them
    reconnects: int = 0
    memory_tokens: int
    memory_frames: int
    memory_span: tuple[float, float] | None
    memory_tiers: tuple[TierInfo, ...] = ()
    long_term: int = 0
    last_frame_age_s: float | None
    error: str | None = None
    memory_clock_span: tuple[str, str] | None = None  # the in-context span in local ISO 8601 times (live)
    restored_frames: int = 0  # frames rebuilt from the archive at start
    archive: ArchiveInfo | None = None  # None without an archive


class RecalledSpan(_Part):
    """An archived clip a question was given."""

    start: float
    end: float
    clock_start: str | None
    clock_end: str | None
    frames: int


class AnswerContext(_Part):
    """The visual context a question was answered on: stream seconds, frames and cached tokens."""

    start: float | None
    end: float | None
    frames: int
    tokens: int
    visual_tokens: int | None = None
    guided: str | None = None
    clock_start: str | None = None  # the span in local ISO 8601 times, for live streams
    clock_end: str | None = None
    turns: int = 0  # earlier turns of the conversation it came with
    recalled: tuple[RecalledSpan, ...] = ()  # archived clips added after the cached context
    recall: str | None = None  # "time" or "content": why they were recalled
    detail: bool = False  # the newest frame was shown in detail
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Timing(_Part):
    """Milliseconds from when the server received the question."""

    queue_ms: float
    ttft_ms: float
    total_ms: float


class WatchInfo(_Part):
    """A watch: what it asks, how, and how it fares."""

    id: int
    stream: str
    condition: str
    every_s: float
    min_duration_s: float
    cooldown_s: float
    threshold: float
    describe: bool
    webhook: str | None = None  # without credentials, query or fragment
    origin: str  # "config" or "api"
    state: str  # idle, pending, firing
    score: float | None = None  # P(yes) at the last evaluation
    evaluated: str | None = None  # local ISO 8601 time of the last evaluation
    evaluated_stream_time: float | None = None
    evaluations: int = 0
    dropped: int = 0  # evaluations replaced by a newer one before the worker could take them
    errors: int = 0
    alerts: int = 0
    error: str | None = None


class TimelineEvent(_Part):
    """One timeline entry: an alert (``watch``, ``condition``, ``score``) or a caption (``text``)."""

    id: int
    kind: str  # "alert" or "caption"
    stream: str
    watch: int | None = None
    condition: str | None = None
    time: str  # local ISO 8601 time it started
    stream_time: float | None = None
    ended: str | None = None  # when the condition stopped holding (alerts)
    ended_stream_time: float | None = None
    score: float | None = None
    text: str | None = None  # the description, or the caption
    snapshot: str | None = None  # the JPEG's URL path (GET with the bearer token)


# --- messages --------------------------------------------------------------------------------------------
class Ready(_Part):
    """Authenticated: the streams this token may see."""

    type: Literal["ready"] = "ready"
    streams: tuple[str, ...]


class Token(_Part):
    """A piece of question ``id``'s answer."""

    type: Literal["token"] = "token"
    id: str
    text: str


class Answer(_Part):
    """Question ``id``'s whole answer, with the context it was answered on and its timing; final."""

    type: Literal["answer"] = "answer"
    id: str
    text: str
    context: AnswerContext
    timing: Timing


class Cancelled(_Part):
    """Question ``id`` was cancelled; final."""

    type: Literal["cancelled"] = "cancelled"
    id: str


class Error(_Part):
    """A request failed (``id`` names it when it had one); final for a question."""

    type: Literal["error"] = "error"
    id: str | None = None
    code: str
    message: str
    retryable: bool = False


class StreamList(_Part):
    """The reply to ``streams``."""

    type: Literal["streams"] = "streams"
    streams: tuple[StreamInfo, ...]


class Status(_Part):
    """Stream ``stream`` as it is now (on subscribing and on every state change), or ``state`` "removed"
    with no other field."""

    type: Literal["status"] = "status"
    stream: str
    source: str | None = None
    state: str
    fps: float | None = None
    frames: int | None = None
    dropped: int | None = None
    reconnects: int | None = None
    memory_tokens: int | None = None
    memory_frames: int | None = None
    memory_span: tuple[float, float] | None = None
    memory_tiers: tuple[TierInfo, ...] | None = None
    long_term: int | None = None
    last_frame_age_s: float | None = None
    error: str | None = None
    memory_clock_span: tuple[str, str] | None = None
    restored_frames: int | None = None
    archive: ArchiveInfo | None = None

    @property
    def removed(self) -> bool:
        return self.state == "removed"

    def info(self) -> StreamInfo | None:
        """The stream's description, or None when it was removed."""
        if self.removed:
            return None
        fields = self.model_dump(exclude={"type", "stream"}, exclude_unset=True)
        return StreamInfo.model_validate({"name": self.stream, **fields})


class StreamAdded(_Part):
    type: Literal["stream_added"] = "stream_added"
    id: str | None = None
    stream: str
    source: str  # the URL without credentials


class StreamRemoved(_Part):
    type: Literal["stream_removed"] = "stream_removed"
    id: str | None = None
    stream: str


class Unsubscribed(_Part):
    type: Literal["unsubscribed"] = "unsubscribed"
    stream: str


class Watching(_Part):
    """The reply to ``watch``: the watch added."""

    type: Literal["watching"] = "watching"
    id: str | None = None
    watch: WatchInfo


class Unwatched(_Part):
    """The reply to ``unwatch``."""

    type: Literal["unwatched"] = "unwatched"
    id: str | None = None
    watch: int
    stream: str


class WatchList(_Part):
    """The reply to ``watches``."""

    type: Literal["watches"] = "watches"
    id: str | None = None
    watches: tuple[WatchInfo, ...]


class WatchStatus(_Part):
    """Pushed to a stream's subscribers: a watch was added or changed state, or ``state`` "removed"."""

    type: Literal["watch_status"] = "watch_status"
    stream: str
    watch: int
    state: str
    info: WatchInfo | None = None


class Alert(_Part):
    """Pushed to a stream's subscribers when a watch fires."""

    type: Literal["alert"] = "alert"
    event: int
    watch: int | None = None
    stream: str
    condition: str | None = None
    time: str  # local ISO 8601 time of the frame it was seen in
    stream_time: float | None = None
    score: float | None = None  # P(yes)
    snapshot: str | None = None  # the JPEG's URL path


class AlertUpdate(_Part):
    """An alert changed: its one-sentence ``description`` is ready, or its condition ``ended``."""

    type: Literal["alert_update"] = "alert_update"
    event: int
    watch: int | None = None
    stream: str
    description: str | None = None
    ended: str | None = None
    ended_stream_time: float | None = None


class EventList(_Part):
    """The reply to ``events``: newest first."""

    type: Literal["events"] = "events"
    id: str | None = None
    events: tuple[TimelineEvent, ...]


ServerMessage = (
    Ready
    | Token
    | Answer
    | Cancelled
    | Error
    | StreamList
    | Status
    | StreamAdded
    | StreamRemoved
    | Unsubscribed
    | Watching
    | Unwatched
    | WatchList
    | WatchStatus
    | Alert
    | AlertUpdate
    | EventList
)
_ADAPTER: TypeAdapter[ServerMessage] = TypeAdapter(Annotated[ServerMessage, Field(discriminator="type")])
#: The ``type`` of every message :data:`ServerMessage` models.
TYPES: frozenset[str] = frozenset(m.model_fields["type"].default for m in get_args(ServerMessage))


def parse(raw: str | bytes) -> ServerMessage | None:
    """One server message, typed; None for a JSON object of a ``type`` this module does not know (a newer
    server's). Raises ``ValueError`` (pydantic's ``ValidationError`` among them) for anything else that is
    not a valid server message."""
    data: Any = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError("a server message is a JSON object with a 'type'")
    if data["type"] not in TYPES:
        return None
    return _ADAPTER.validate_python(data)
