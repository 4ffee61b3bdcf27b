"""web/protocol.py on its own: client messages in, server messages out, every error code in one place."""

from __future__ import annotations

import json

import pytest

from engine.events import (
    AnswerContext,
    Answered,
    Cancelled,
    Failed,
    StreamInfo,
    StreamStatus,
    TierInfo,
    Timing,
    Token,
)
from errors import (
    BadRequest,
    Busy,
    ConfigError,
    Conflict,
    Forbidden,
    Internal,
    LivesightError,
    ModelUnavailable,
    NoVideo,
    ShuttingDown,
    SourceError,
    TooLarge,
    TooManyWatches,
    Unauthorized,
    UnknownStream,
    UnknownWatch,
)
from web import protocol
from web.protocol import MAX_MESSAGE_BYTES, Ask, Auth, Cancel, ProtocolError, parse, request


def test_every_client_message_round_trips_through_request_and_parse() -> None:
    msgs: list[protocol.Message] = [
        Auth(token="secret-token"),
        Ask(id="q1", stream="demo", question="What?", max_new_tokens=8, session="s", guided="uniform"),
        Cancel(id="q1"),
        protocol.Streams(),
        protocol.AddStream(name="cam", url="demo", id="r1"),
        protocol.RemoveStream(name="cam"),
        protocol.Subscribe(stream="cam"),
        protocol.Unsubscribe(stream="cam"),
    ]
    for msg in msgs:
        wire = request(msg)
        assert json.loads(wire)["type"] == msg.type
        assert parse(wire) == msg
    # Fields left at None are not sent.
    assert "session" not in json.loads(request(Ask(id="q", stream="s", question="x")))


def test_ask_accepts_a_guided_mode_and_rejects_others() -> None:
    msg = parse(json.dumps({"type": "ask", "id": "a", "stream": "s", "question": "q", "guided": "attention"}))
    assert isinstance(msg, Ask)
    assert msg.guided == "attention"
    plain = parse(json.dumps({"type": "ask", "id": "a", "stream": "s", "question": "q"}))
    assert isinstance(plain, Ask)
    assert plain.guided is None
    with pytest.raises(ProtocolError, match="guided"):
        parse(json.dumps({"type": "ask", "id": "a", "stream": "s", "question": "q", "guided": "all"}))


@pytest.mark.parametrize(
    ("raw", "error", "msg_id"),
    [
        ("not json", BadRequest, None),
        (b"\x00", BadRequest, None),
        ("[1]", BadRequest, None),
        ('{"id": "x"}', BadRequest, "x"),
        ('{"type": "dance", "id": "d"}', BadRequest, "d"),
        ('{"type": "ask", "id": "m", "stream": "s"}', BadRequest, "m"),
        ('{"type": "ask", "id": "m", "stream": "s", "question": "q", "extra": 1}', BadRequest, "m"),
        ('{"type": "ask", "id": "m", "stream": "s", "question": "q", "max_new_tokens": "8"}', BadRequest, "m"),
        ('{"type": "ask", "id": "m", "stream": "s", "question": "q", "max_new_tokens": 1025}', BadRequest, "m"),
        ("x" * (MAX_MESSAGE_BYTES + 1), TooLarge, None),
        ("[" * 5000, BadRequest, None),
    ],
)
def test_bad_messages_are_typed_errors_carrying_the_id_when_readable(
    raw: str | bytes, error: type[LivesightError], msg_id: str | None
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    assert type(info.value.error) is error
    assert info.value.msg_id == msg_id


def test_unknown_types_name_the_known_ones() -> None:
    with pytest.raises(ProtocolError) as info:
        parse('{"type": "dance"}')
    assert "unknown message type 'dance'" in info.value.error.message
    assert "ask" in info.value.error.message and "subscribe" in info.value.error.message


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest("x"), "bad_request"),
        (Conflict("x"), "bad_request"),
        (ConfigError("x"), "bad_request"),
        (UnknownStream("x"), "unknown_stream"),
        (Unauthorized("x"), "unauthorized"),
        (TooLarge("x"), "too_large"),
        (Busy("x"), "busy"),
        (Internal("x"), "internal"),
        (ModelUnavailable("x"), "unavailable"),
        (SourceError("x"), "unavailable"),
        (ShuttingDown("x"), "unavailable"),
        (NoVideo("x"), "no_video"),
        (Forbidden("x"), "forbidden"),
        (LivesightError("x"), "internal"),
    ],
)
def test_every_error_has_one_documented_code(error: LivesightError, code: str) -> None:
    assert protocol.error_code(error) == code
    assert code in protocol.ERROR_CODES
    wire = protocol.error("q1", error)
    assert wire == {"type": "error", "id": "q1", "code": code, "message": "x", "retryable": error.retryable}


def test_every_documented_code_is_reachable() -> None:
    """No code in the README's list is dead: each is what some error maps to."""
    errors = [BadRequest, UnknownStream, NoVideo, Unauthorized, Forbidden, TooLarge, Busy, ShuttingDown, Internal]
    errors += [UnknownWatch, TooManyWatches]
    assert sorted({protocol.error_code(e("x")) for e in errors}) == sorted(protocol.ERROR_CODES)


def test_busy_is_retryable_and_retryable_can_be_set() -> None:
    assert protocol.error(None, Busy("full"))["retryable"] is True
    assert protocol.error(None, SourceError("camera rebooting", retryable=True))["retryable"] is True
    assert protocol.error(None, BadRequest("no"))["retryable"] is False


def test_question_events_become_their_messages() -> None:
    ctx = AnswerContext(
        start=1.0, end=9.0, frames=8, tokens=300, visual_tokens=128, guided=None, prompt_tokens=310, completion_tokens=3
    )
    timing = Timing(queue_ms=0.5, ttft_ms=12.0, total_ms=40.0)
    assert protocol.event(Token("q1", "Hi")) == {"type": "token", "id": "q1", "text": "Hi"}
    assert protocol.event(Answered("q1", "Hi there", ctx, timing)) == {
        "type": "answer",
        "id": "q1",
        "text": "Hi there",
        "context": {
            "start": 1.0,
            "end": 9.0,
            "frames": 8,
            "tokens": 300,
            "visual_tokens": 128,
            "guided": None,
            "clock_start": None,
            "clock_end": None,
            "turns": 0,
            "recalled": [],
            "recall": None,
            "detail": False,
            "prompt_tokens": 310,
            "completion_tokens": 3,
        },
        "timing": {"queue_ms": 0.5, "ttft_ms": 12.0, "total_ms": 40.0},
    }
    assert protocol.event(Cancelled("q1")) == {"type": "cancelled", "id": "q1"}
    failed = protocol.event(Failed("q1", Internal("answering failed")))
    assert failed == {
        "type": "error",
        "id": "q1",
        "code": "internal",
        "message": "answering failed",
        "retryable": False,
    }


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
    memory_tiers=(TierInfo(tier=0, tokens_per_frame=16, tokens=64, frames=4, span=(6.0, 9.0)),),
    long_term=0,
    last_frame_age_s=0.2,
    error=None,
)


def test_streams_and_status_carry_the_same_fields() -> None:
    listed = protocol.streams([INFO])["streams"][0]
    assert listed["name"] == "cam" and listed["memory_span"] == [0.0, 9.0]
    assert listed["memory_tiers"] == [
        {"tier": 0, "tokens_per_frame": 16, "tokens": 64, "frames": 4, "span": [6.0, 9.0]}
    ]
    status = protocol.status(StreamStatus("cam", INFO))
    assert status["type"] == "status" and status["stream"] == "cam"
    assert {k: v for k, v in status.items() if k not in ("type", "stream")} == {
        k: v for k, v in listed.items() if k != "name"
    }
    assert protocol.status(StreamStatus("cam", None)) == {"type": "status", "stream": "cam", "state": "removed"}
    # Every wire message is plain JSON.
    assert json.loads(protocol.dumps(status)) == status
