"""The websocket protocol, both directions: the one place where wire messages are shaped.

Client messages are parsed and validated once, at the edge: every message is a JSON object with a
``type``; unknown types, unknown or missing fields and ill-typed values are ``bad_request``; a message over
:data:`MAX_MESSAGE_BYTES` is ``too_large``. The same models build requests in clients
(:func:`request`). Server messages are made here from the engine's typed events (:func:`event`), stream
descriptions (:func:`stream_info`) and errors (:func:`error`), whose wire codes are all mapped in
:func:`error_code`. Each server message has its model in :mod:`web.server_messages`, which clients parse
with; ``tests/test_server_messages.py`` checks every shape made here against it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import datetime, tzinfo
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.events import (
    Alert,
    AlertUpdate,
    Answered,
    Cancelled,
    Failed,
    QuestionEvent,
    StreamEvent,
    StreamInfo,
    StreamStatus,
    TimelineEvent,
    Token,
    WatchInfo,
    WatchStatus,
)
from engine.watches import (
    DEFAULT_COOLDOWN_S,
    DEFAULT_EVERY_S,
    DEFAULT_THRESHOLD,
    HYSTERESIS,
    MAX_CONDITION_CHARS,
    MAX_DURATION_S,
    MAX_EVERY_S,
    MIN_EVERY_S,
)
from errors import (
    BadRequest,
    Kind,
    LivesightError,
    NoVideo,
    TooLarge,
    TooManyWatches,
    UnknownStream,
    UnknownWatch,
)

#: Largest client message the protocol accepts (bytes of UTF-8). Larger ones get ``too_large``; the
#: connection stays open. Messages over :data:`HARD_LIMIT_BYTES` close the connection (code 1009).
MAX_MESSAGE_BYTES = 16 * 1024
HARD_LIMIT_BYTES = 1024 * 1024
MAX_QUESTION_CHARS = 4000
MAX_NEW_TOKENS = 1024

Id = Annotated[StrictStr, Field(min_length=1, max_length=64)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Auth(_Msg):
    type: Literal["auth"] = "auth"
    token: Annotated[StrictStr, Field(max_length=512)]


class RecallWindow(_Msg):
    """Recall the archived clips in this window: ISO 8601 times (wall clock; without an offset, in the
    server's time zone) for a live stream, stream seconds for a file."""

    start: StrictStr | StrictFloat | StrictInt
    end: StrictStr | StrictFloat | StrictInt

    @model_validator(mode="after")
    def _same_kind_and_ordered(self) -> RecallWindow:
        if isinstance(self.start, str) != isinstance(self.end, str):
            raise ValueError("start and end must both be ISO 8601 times or both stream seconds")
        if isinstance(self.start, str) and isinstance(self.end, str):
            try:
                start, end = datetime.fromisoformat(self.start), datetime.fromisoformat(self.end)
            except ValueError as exc:
                raise ValueError(f"not an ISO 8601 time: {exc}") from None
            if (start.tzinfo is None) != (end.tzinfo is None) or not start < end:
                raise ValueError("the window must end after it starts (both with or both without an offset)")
        elif not float(self.start) < float(self.end):
            raise ValueError("the window must end after it starts")
        return self


class Ask(_Msg):
    type: Literal["ask"] = "ask"
    id: Id
    stream: Name
    question: Annotated[StrictStr, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]
    max_new_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_NEW_TOKENS)] = 128
    session: Id | None = None
    #: answer with a fresh prefill that drops visual tokens inside the model, chosen uniformly or by the
    #: question's attention (slower: the cached prefix is not used); omitted: on the cached prefix
    guided: Literal["uniform", "attention"] | None = None
    #: archived clips to add after the cached context: "auto" (the question's time words, else its
    #: content), "off", or a window
    recall: Literal["auto", "off"] | RecallWindow = "auto"
    #: show the newest frame at high resolution too (also done when the question asks about fine detail)
    detail: StrictBool = False


class Cancel(_Msg):
    type: Literal["cancel"] = "cancel"
    id: Id


class Streams(_Msg):
    type: Literal["streams"] = "streams"


class AddStream(_Msg):
    """Start ingesting ``url`` (anything ``livesight serve --source`` takes) as stream ``name``."""

    type: Literal["add_stream"] = "add_stream"
    name: Name
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    id: Id | None = None


class RemoveStream(_Msg):
    type: Literal["remove_stream"] = "remove_stream"
    name: Name
    id: Id | None = None


class Subscribe(_Msg):
    """Receive a ``status`` message now and on every state change of ``stream``."""

    type: Literal["subscribe"] = "subscribe"
    stream: Name


class Unsubscribe(_Msg):
    type: Literal["unsubscribe"] = "unsubscribe"
    stream: Name


Number = StrictFloat | StrictInt
#: Events one ``events`` request (or ``GET /v1/events``) returns at most.
MAX_EVENTS = 500
MAX_TEXT_QUERY_CHARS = 200


def check_webhook(url: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (``ValueError`` otherwise)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook is an http:// or https:// URL with a host")
    return url


class Watch(_Msg):
    """Watch ``stream`` for ``condition`` (a yes/no question asked of its video every ``every_s`` seconds);
    admin token. ``id`` names the request (echoed in ``watching``)."""

    type: Literal["watch"] = "watch"
    id: Id | None = None
    stream: Name
    condition: Annotated[StrictStr, Field(min_length=1, max_length=MAX_CONDITION_CHARS)]
    every_s: Annotated[Number, Field(ge=MIN_EVERY_S, le=MAX_EVERY_S)] = DEFAULT_EVERY_S
    min_duration_s: Annotated[Number, Field(ge=0, le=MAX_DURATION_S)] = 0.0
    cooldown_s: Annotated[Number, Field(ge=0, le=MAX_DURATION_S)] = DEFAULT_COOLDOWN_S
    threshold: Annotated[Number, Field(gt=HYSTERESIS, lt=1)] = DEFAULT_THRESHOLD
    describe: StrictBool = False
    webhook: Annotated[StrictStr, Field(max_length=2048)] | None = None

    @field_validator("condition")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the condition is blank")
        return value

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook(value)


class Unwatch(_Msg):
    """Stop watch ``watch``; admin token."""

    type: Literal["unwatch"] = "unwatch"
    id: Id | None = None
    watch: Annotated[StrictInt, Field(ge=1)]


class Watches(_Msg):
    """List the watches (of ``stream``, when given) this token may see."""

    type: Literal["watches"] = "watches"
    id: Id | None = None
    stream: Name | None = None


def _time_bound(value: str | None) -> str | None:
    if value is not None:
        parse_since(value, 0.0, None)  # raises ValueError for what is neither a time nor a duration
    return value


class Events(_Msg):
    """Timeline entries (alerts, captions), newest first. ``since``/``until``: ISO 8601 times (without an
    offset: the server's time zone) or durations before now (``90s``, ``30m``, ``1h``, ``7d``)."""

    type: Literal["events"] = "events"
    id: Id | None = None
    stream: Name | None = None
    watch: Annotated[StrictInt, Field(ge=1)] | None = None
    kind: Literal["alert", "caption"] | None = None
    since: Annotated[StrictStr, Field(max_length=64)] | None = None
    until: Annotated[StrictStr, Field(max_length=64)] | None = None
    text: Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_QUERY_CHARS)] | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=MAX_EVENTS)] = 50

    @field_validator("since", "until")
    @classmethod
    def _bound(cls, value: str | None) -> str | None:
        return _time_bound(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float, tz: tzinfo | None) -> float:
    """A time bound as seconds since the epoch: an ISO 8601 time (without an offset: in ``tz``) or a
    duration before ``now`` (``90s``, ``30m``, ``1h``, ``7d``, ``2w``). ``ValueError`` for anything else."""
    m = _DURATION.match(text)
    if m is not None:
        return now - float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor a duration such as 1h") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz) if tz is not None else t.astimezone()
    return t.timestamp()


def events_filter(
    stream: str | None = None,
    watch: int | None = None,
    kind: str | None = None,
    since: str | None = None,
    until: str | None = None,
    text: str | None = None,
    limit: int = 50,
) -> Events:
    """An ``events`` request from loose values (an HTTP query string's), validated the same way;
    ``BadRequest`` naming what is wrong."""
    try:
        return Events.model_validate(
            {
                k: v
                for k, v in dict(
                    stream=stream, watch=watch, kind=kind, since=since, until=until, text=text, limit=limit
                ).items()
                if v is not None
            }
        )
    except ValidationError as exc:
        raise BadRequest(_describe(exc, "events")) from None


Message = (
    Auth
    | Ask
    | Cancel
    | Streams
    | AddStream
    | RemoveStream
    | Subscribe
    | Unsubscribe
    | Watch
    | Unwatch
    | Watches
    | Events
)
Request = Annotated[Message, Field(discriminator="type")]
_ADAPTER: TypeAdapter[Message] = TypeAdapter(Request)


class ProtocolError(Exception):
    """A bad client message: the typed error, and the message's ``id`` when one could be read."""

    def __init__(self, error: BadRequest | TooLarge, msg_id: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.msg_id = msg_id


def parse(raw: str | bytes) -> Message:
    """Validate one websocket message; raises :class:`ProtocolError`."""
    if isinstance(raw, bytes):
        raise ProtocolError(BadRequest("binary messages are not part of the protocol; send JSON text"), None)
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(TooLarge(f"message of {size} bytes; the limit is {MAX_MESSAGE_BYTES}"), None)
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(BadRequest(f"not JSON: {exc}"), None) from None
    except RecursionError:
        raise ProtocolError(BadRequest("JSON nested too deeply"), None) from None
    if not isinstance(data, dict):
        raise ProtocolError(BadRequest("a message must be a JSON object with a 'type'"), None)
    msg_id = data.get("id") if isinstance(data.get("id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BadRequest("missing 'type'"), msg_id)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(BadRequest(_describe(exc, kind)), msg_id) from None


def request(msg: Message) -> str:
    """A client message as wire JSON (fields left at None are omitted)."""
    return msg.model_dump_json(exclude_none=True)


def _describe(exc: ValidationError, kind: str) -> str:
    first = exc.errors()[0]
    if first["type"] == "union_tag_invalid":
        return (
            f"unknown message type {kind!r}; known: auth, ask, cancel, streams, "
            "add_stream, remove_stream, subscribe, unsubscribe, watch, unwatch, watches, events"
        )
    where = ".".join(str(p) for p in first["loc"][1:]) or "message"
    return f"{kind}: field {where!r}: {first['msg']}"


# --- server messages -------------------------------------------------------------------------------------
Wire = dict[str, Any]

#: Wire codes of errors that name a thing; the rest are mapped by kind below.
_CODE_BY_CLASS: dict[type[LivesightError], str] = {
    UnknownStream: "unknown_stream",
    NoVideo: "no_video",
    UnknownWatch: "unknown_watch",
    TooManyWatches: "too_many_watches",
}
_CODE_BY_KIND: dict[Kind, str] = {
    Kind.INVALID: "bad_request",
    Kind.CONFLICT: "bad_request",
    Kind.NOT_FOUND: "bad_request",
    Kind.TOO_LARGE: "too_large",
    Kind.BUSY: "busy",
    Kind.UNAUTHORIZED: "unauthorized",
    Kind.FORBIDDEN: "forbidden",
    Kind.UNAVAILABLE: "unavailable",
}
#: Every code an ``error`` message can carry (README, "Errors").
ERROR_CODES = (
    "bad_request",
    "unknown_stream",
    "no_video",
    "unauthorized",
    "forbidden",
    "too_large",
    "busy",
    "unavailable",
    "internal",
    "unknown_watch",
    "too_many_watches",
)


def error_code(exc: LivesightError) -> str:
    """The wire code of an error: the most specific class mapped, else its kind, else ``internal``."""
    for cls in type(exc).__mro__:
        if cls in _CODE_BY_CLASS:
            return _CODE_BY_CLASS[cls]
    return _CODE_BY_KIND.get(exc.kind, "internal")


def error(msg_id: str | None, exc: LivesightError) -> Wire:
    return {"type": "error", "id": msg_id, "code": error_code(exc), "message": exc.message, "retryable": exc.retryable}


def ready(streams: list[str]) -> Wire:
    return {"type": "ready", "streams": streams}


def stream_info(info: StreamInfo) -> Wire:
    """One stream as ``streams`` lists it (``status`` carries the same fields)."""
    out = _plain(asdict(info))
    assert isinstance(out, dict)
    return out


def streams(infos: list[StreamInfo]) -> Wire:
    return {"type": "streams", "streams": [stream_info(i) for i in infos]}


def status(event: StreamStatus) -> Wire:
    if event.info is None:
        return {"type": "status", "stream": event.stream, "state": "removed"}
    info = stream_info(event.info)
    del info["name"]
    return {"type": "status", "stream": event.stream, **info}


def stream_added(msg_id: str | None, name: str, source: str) -> Wire:
    return {"type": "stream_added", "id": msg_id, "stream": name, "source": source}


def stream_removed(msg_id: str | None, name: str) -> Wire:
    return {"type": "stream_removed", "id": msg_id, "stream": name}


def unsubscribed(name: str) -> Wire:
    return {"type": "unsubscribed", "stream": name}


# --- watches and the timeline ------------------------------------------------------------------------
def snapshot_url(event: int) -> str:
    """Where an event's JPEG is served (relative to the server: ``GET`` with the bearer token)."""
    return f"/v1/events/{event}/snapshot.jpg"


def watch_info(info: WatchInfo) -> Wire:
    out = asdict(info)
    return out


def watching(msg_id: str | None, info: WatchInfo) -> Wire:
    return {"type": "watching", "id": msg_id, "watch": watch_info(info)}


def unwatched(msg_id: str | None, info: WatchInfo) -> Wire:
    return {"type": "unwatched", "id": msg_id, "watch": info.id, "stream": info.stream}


def watches(msg_id: str | None, infos: list[WatchInfo]) -> Wire:
    return {"type": "watches", "id": msg_id, "watches": [watch_info(i) for i in infos]}


def watch_status(ev: WatchStatus) -> Wire:
    """A watch added or changing state, or ``state`` "removed" (``info`` null)."""
    if ev.info is None:
        return {"type": "watch_status", "stream": ev.stream, "watch": ev.watch, "state": "removed", "info": None}
    return {
        "type": "watch_status",
        "stream": ev.stream,
        "watch": ev.watch,
        "state": ev.info.state,
        "info": watch_info(ev.info),
    }


def timeline_event(e: TimelineEvent) -> Wire:
    """One timeline entry as ``events`` lists it (``GET /v1/events`` too)."""
    out = asdict(e)
    out["snapshot"] = snapshot_url(e.id) if e.snapshot else None
    return out


def events(msg_id: str | None, found: list[TimelineEvent]) -> Wire:
    return {"type": "events", "id": msg_id, "events": [timeline_event(e) for e in found]}


def alert(ev: Alert) -> Wire:
    e = ev.event
    return {
        "type": "alert",
        "event": e.id,
        "watch": e.watch,
        "stream": e.stream,
        "condition": e.condition,
        "time": e.time,
        "stream_time": e.stream_time,
        "score": e.score,
        "snapshot": snapshot_url(e.id) if e.snapshot else None,
    }


def alert_update(ev: AlertUpdate) -> Wire:
    e = ev.event
    return {
        "type": "alert_update",
        "event": e.id,
        "watch": e.watch,
        "stream": e.stream,
        "description": e.text,
        "ended": e.ended,
        "ended_stream_time": e.ended_stream_time,
    }


def stream_event(ev: StreamEvent) -> Wire:
    """Anything a stream's subscribers hear, as its wire message."""
    if isinstance(ev, StreamStatus):
        return status(ev)
    if isinstance(ev, WatchStatus):
        return watch_status(ev)
    if isinstance(ev, Alert):
        return alert(ev)
    return alert_update(ev)


def event(ev: QuestionEvent) -> Wire:
    """A question's event as its wire message."""
    if isinstance(ev, Token):
        return {"type": "token", "id": ev.question, "text": ev.text}
    if isinstance(ev, Answered):
        return {
            "type": "answer",
            "id": ev.question,
            "text": ev.text,
            "context": _plain(asdict(ev.context)),
            "timing": asdict(ev.timing),
        }
    if isinstance(ev, Cancelled):
        return {"type": "cancelled", "id": ev.question}
    assert isinstance(ev, Failed)
    return error(ev.question, ev.error)


def _plain(value: Any) -> Any:
    """Tuples as lists, all the way down: what the wire shows (and what JSON would make of them)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dumps(msg: Wire) -> str:
    """Compact JSON, as every server message is sent."""
    return json.dumps(msg, separators=(",", ":"))
