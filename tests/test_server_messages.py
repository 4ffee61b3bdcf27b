"""web/server_messages.py against web/protocol.py: every server message the shaping functions make
validates against its model, field for field, and every model has a shaping function that makes it."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from engine.events import (
    Alert,
    AlertUpdate,
    AnswerContext,
    Answered,
    Cancelled,
    Failed,
    StreamInfo,
    StreamStatus,
    TierInfo,
    TimelineEvent,
    Timing,
    Token,
    WatchInfo,
    WatchStatus,
)
from errors import (
    BadRequest,
    Busy,
    Forbidden,
    Internal,
    NoVideo,
    ShuttingDown,
    TooLarge,
    TooManyWatches,
    Unauthorized,
    UnknownStream,
    UnknownWatch,
)
from web import protocol, server_messages

INFO = StreamInfo(
    name="cam",
    source="rtsp://***@10.0.0.5/s",
    state="live",
    fps=1.0,
    frames=10,
    dropped=2,
    reconnects=1,
    memory_tokens=160,
    memory_frames=10,
    memory_span=(0.0, 9.0),
    memory_tiers=(
        TierInfo(tier=0, tokens_per_frame=64, tokens=128, frames=2, span=(8.0, 9.0)),
        TierInfo(tier=1, tokens_per_frame=16, tokens=32, frames=2, span=None),
    ),
    long_term=3,
    last_frame_age_s=0.2,
    error=None,
)
STARTING = StreamInfo(
    name="door",
    source="demo",
    state="starting",
    fps=2.0,
    frames=0,
    dropped=0,
    reconnects=0,
    memory_tokens=0,
    memory_frames=0,
    memory_span=None,
    memory_tiers=(),
    long_term=0,
    last_frame_age_s=None,
    error="camera unreachable",
)
CONTEXT = AnswerContext(start=1.0, end=9.5, frames=8, tokens=300, visual_tokens=128, guided=None)
GUIDED = AnswerContext(start=None, end=None, frames=0, tokens=0, visual_tokens=0, guided="attention")
TIMING = Timing(queue_ms=0.5, ttft_ms=12.0, total_ms=40.0)
WATCH = WatchInfo(
    id=3,
    stream="cam",
    condition="a person is at the door",
    every_s=5.0,
    min_duration_s=0.0,
    cooldown_s=60.0,
    threshold=0.6,
    describe=True,
    webhook="https://hooks.example.com/alerts",
    origin="api",
    state="firing",
    score=0.91,
    evaluated="2026-12-01T10:00:05.000+01:00",
    evaluated_stream_time=65.0,
    evaluations=13,
    dropped=1,
    errors=0,
    alerts=1,
    error=None,
)
NEW_WATCH = WatchInfo(
    4,
    "door",
    "the lights are off",
    2.0,
    4.0,
    0.0,
    0.7,
    False,
    None,
    "config",
    "idle",
    None,
    None,
    None,
    0,
    0,
    0,
    0,
    None,
)
ALERT = TimelineEvent(
    id=7,
    kind="alert",
    stream="cam",
    watch=3,
    condition="a person is at the door",
    time="2026-12-01T10:00:05.000+01:00",
    stream_time=65.0,
    ended=None,
    ended_stream_time=None,
    score=0.91,
    text=None,
    snapshot=True,
)
DESCRIBED = TimelineEvent(
    7, "alert", "cam", 3, "a person is at the door", "2026-12-01T10:00:05.000+01:00", 65.0,
    "2026-12-01T10:00:15.000+01:00", 75.0, 0.91, "A man in a red coat rings the bell.", True,
)  # fmt: skip
CAPTION = TimelineEvent(
    8, "caption", "cam", None, None, "2026-12-01T10:01:00.000+01:00", 120.0, None, None, None, "A quiet street.", False
)

#: Every server message the shaping functions make, each kind in its variants.
MADE: list[dict[str, Any]] = [
    protocol.ready(["demo", "cam"]),
    protocol.ready([]),
    protocol.event(Token("q1", "Hi")),
    protocol.event(Answered("q1", "Hi there", CONTEXT, TIMING)),
    protocol.event(Answered("q2", "", GUIDED, TIMING)),
    protocol.event(Cancelled("q1")),
    protocol.event(Failed("q1", Internal("answering failed"))),
    *(
        protocol.error(msg_id, exc)
        for msg_id, exc in [
            (None, BadRequest("bad")),
            ("q3", UnknownStream("no such stream")),
            ("q4", NoVideo("no video yet")),
            (None, Unauthorized("wrong token")),
            ("r1", Forbidden("viewers may not")),
            (None, TooLarge("too big")),
            ("q5", Busy("full")),
            ("q6", ShuttingDown("stopping")),
        ]
    ),
    protocol.streams([INFO, STARTING]),
    protocol.streams([]),
    protocol.status(StreamStatus("cam", INFO)),
    protocol.status(StreamStatus("door", STARTING)),
    protocol.status(StreamStatus("cam", None)),
    protocol.stream_added("r1", "cam", "rtsp://***@10.0.0.5/s"),
    protocol.stream_added(None, "cam", "demo"),
    protocol.stream_removed("r2", "cam"),
    protocol.stream_removed(None, "cam"),
    protocol.unsubscribed("cam"),
    protocol.watching("w1", WATCH),
    protocol.watching(None, NEW_WATCH),
    protocol.unwatched("w2", WATCH),
    protocol.watches("w3", [WATCH, NEW_WATCH]),
    protocol.watches(None, []),
    protocol.watch_status(WatchStatus("cam", 3, WATCH)),
    protocol.watch_status(WatchStatus("cam", 3, None)),
    protocol.alert(Alert(ALERT)),
    protocol.alert(Alert(replace(ALERT, snapshot=False))),
    protocol.alert_update(AlertUpdate(DESCRIBED)),
    protocol.alert_update(AlertUpdate(ALERT)),
    protocol.events("e1", [DESCRIBED, CAPTION]),
    protocol.events(None, []),
    protocol.error("w4", UnknownWatch("no watch 9")),
    protocol.error("w5", TooManyWatches("16 watches")),
]


def extras(model: BaseModel, where: str = "") -> list[str]:
    """Fields a model took without declaring them, at any depth."""
    found = [f"{where}{name}" for name in model.model_extra or {}]
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, BaseModel):
                found += extras(item, f"{where}{name}.")
    return found


@pytest.mark.parametrize("made", MADE, ids=lambda m: str(m["type"]))
def test_every_server_message_validates_against_its_model_field_for_field(made: dict[str, Any]) -> None:
    wire = json.loads(protocol.dumps(made))
    msg = server_messages.parse(protocol.dumps(made))
    assert msg is not None and msg.type == made["type"]
    assert not extras(msg), f"fields the model does not declare: {extras(msg)}"
    # Nothing lost or changed on the way: the model gives back exactly what the server sent.
    assert msg.model_dump(mode="json", exclude_unset=True) == wire


def test_every_model_is_made_by_the_server() -> None:
    """A model with no shaping function (or one missing from MADE above) fails here."""
    assert {m["type"] for m in MADE} == server_messages.TYPES


def test_every_error_code_reads_back_as_its_client_error_class() -> None:
    from livesight.client import ServerError

    for code in protocol.ERROR_CODES:
        err = ServerError.from_wire(server_messages.Error(code=code, message="m", retryable=True))
        assert err.code == code and type(err) is not ServerError and err.retryable
    unknown = ServerError.from_wire(server_messages.Error(code="new_code", message="m"))
    assert type(unknown) is ServerError and unknown.code == "new_code" and not unknown.retryable


def test_a_newer_server_is_read_leniently() -> None:
    assert server_messages.parse('{"type":"watch_fired","id":"w1"}') is None  # a type this client does not know
    msg = server_messages.parse('{"type":"cancelled","id":"q1","reason":"new field"}')
    assert isinstance(msg, server_messages.Cancelled) and msg.model_extra == {"reason": "new field"}


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ('{"type":"token","id":"q1"}', "text"),
        ("[1]", "JSON object with a 'type'"),
        ('{"id":"q1"}', "JSON object with a 'type'"),
        ("not json", "Expecting value"),
    ],
)
def test_what_is_not_a_server_message_is_a_value_error(raw: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        server_messages.parse(raw)


def test_a_status_reads_as_a_stream_info() -> None:
    live = server_messages.parse(protocol.dumps(protocol.status(StreamStatus("cam", INFO))))
    assert isinstance(live, server_messages.Status) and not live.removed
    info = live.info()
    listed = server_messages.parse(protocol.dumps(protocol.streams([INFO])))
    assert isinstance(listed, server_messages.StreamList) and info == listed.streams[0]
    removed = server_messages.parse(protocol.dumps(protocol.status(StreamStatus("cam", None))))
    assert isinstance(removed, server_messages.Status) and removed.removed and removed.info() is None
