"""The OpenAI-compatible API's rules without a client library: messages to turns, errors to statuses, and
the HTTP edges (HTTP/1.0 streaming, limits) with raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from http import HTTPStatus
from typing import Any

import pytest

from engine.engine import EngineSettings
from engine.sessions import MAX_TURN_CHARS, MAX_TURNS
from errors import Busy, Forbidden, Internal, NoVideo, ShuttingDown, TooLarge, Unauthorized, UnknownStream
from models.adapter import Turn
from models.families.smolvlm import SmolVLMAdapter
from tests.support.server import TOKEN, Server, client, http_request, running_server, wait_for_frames
from web import openai_api as api
from web.plain_http import MAX_BODY_BYTES
from web.server import Limits

pytestmark = pytest.mark.server(sources=["demo"], fps=2.0)


def chat(**fields: Any) -> api.ChatRequest:
    return api.parse_chat(json.dumps({"model": "livesight/demo", "messages": [user("Hi?")], **fields}).encode())


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def convo(*messages: dict[str, Any]) -> tuple[str, tuple[Turn, ...]]:
    return api.conversation(chat(messages=list(messages)).messages)


def test_messages_become_a_question_and_turns() -> None:
    system = {"role": "system", "content": "Be brief."}
    assert convo(system, user("What?")) == ("What?", ())
    assert convo(assistant("Hello!"), user("Q1"), assistant("A1"), user("Q2")) == ("Q2", (Turn("Q1", "A1"),))
    # User messages in a row are one question; text parts are joined.
    parts = [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]
    assert convo(user("a"), user("b"), assistant("c"), user(parts)) == ("part one\npart two", (Turn("a\nb", "c"),))
    many = [m for i in range(10) for m in (user(f"q{i}"), assistant(f"a{i}"))]
    _, turns = convo(*many, user("last"))
    assert [t.question for t in turns] == [f"q{i}" for i in range(10 - MAX_TURNS, 10)]
    _, (turn,) = convo(user("x" * 5000), assistant("y" * 5000), user("z"))
    assert len(turn.question) == len(turn.answer) == MAX_TURN_CHARS


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([user("q"), assistant("a")], "messages"),
        ([user("   ")], "messages"),
        ([user("x" * 4001)], "messages"),
        ([user([{"type": "image_url", "image_url": {"url": "data:,"}}])], "messages.0.content"),
        ([{"role": "tool", "content": "1", "tool_call_id": "t"}, user("q")], "messages.0"),
        ([{"role": "captain", "content": "q"}], "messages.0.role"),
    ],
)
def test_messages_livesight_cannot_answer_are_refused(messages: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(api.ApiError) as refused:
        convo(*messages)
    assert refused.value.status == 400 and refused.value.param == param


def test_options_honoured_ignored_and_refused() -> None:
    assert chat().answer_tokens == api.DEFAULT_MAX_TOKENS
    assert chat(max_tokens=9).answer_tokens == 9
    assert chat(max_tokens=9, max_completion_tokens=5).answer_tokens == 5
    assert chat(max_tokens=100_000).answer_tokens == 1024  # an upper bound: capped at the server's
    assert chat(model="demo").stream_name == chat().stream_name == "demo"
    ignored = {"temperature": 0.7, "top_p": 0.9, "seed": 1, "user": "u", "n": 1, "stream": False, "tool_choice": "none"}
    assert chat(**ignored, response_format={"type": "text"}, stream_options={"include_usage": True}).include_usage
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"n": 3}, "n"),
        ({"tool_choice": "auto"}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"temprature": 1}, "temprature"),
    ]
    for refused, param in refusals:
        with pytest.raises(api.ApiError) as bad:
            chat(**refused)
        assert (bad.value.status, bad.value.param) == (400, param), refused
    for body in (b"not json", b"[1]", b'{"model": "x"}'):
        with pytest.raises(api.ApiError):
            api.parse_chat(body)


@pytest.mark.parametrize(
    ("error", "status", "kind", "retry_after"),
    [
        (UnknownStream("x"), 404, "not_found_error", None),
        (NoVideo("x"), 503, "server_error", "1"),
        (Busy("x"), 429, "rate_limit_error", "1"),
        (ShuttingDown("x"), 503, "server_error", "1"),
        (Unauthorized("x"), 401, "authentication_error", None),
        (Forbidden("x"), 403, "permission_error", None),
        (TooLarge("x"), 400, "invalid_request_error", None),
        (Internal("x"), 500, "server_error", None),
    ],
)
def test_errors_map_to_statuses(error: Exception, status: int, kind: str, retry_after: str | None) -> None:
    assert isinstance(error, api.LivesightError)
    mapped = api.api_error(error)
    assert mapped.status == status
    assert mapped.body()["error"]["type"] == kind
    assert dict(mapped.headers).get("Retry-After") == retry_after


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def post(body: bytes, version: str = "HTTP/1.1") -> bytes:
    return (
        f"POST {api.CHAT_PATH} {version}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_http_edges(srv: Server) -> None:
    await wait_for_frames(srv.engine, "demo", 1)
    ask = {"model": "livesight/demo", "messages": [user("Hi?")], "max_tokens": 3, "stream": True}
    # HTTP/1.0 has no chunked coding: the events end with the connection.
    reply = await asyncio.to_thread(exchange, srv.port, post(json.dumps(ask).encode(), "HTTP/1.0"))
    head, _, events = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding" not in head
    assert events.startswith(b"data: {") and events.endswith(b"data: [DONE]\n\n")
    # The body limit, in OpenAI's shape on this path.
    big = post(b"x" * (MAX_BODY_BYTES + 1))
    head, _, body = (await asyncio.to_thread(exchange, srv.port, big)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "too_large"
    res = await asyncio.to_thread(http_request, srv.port, "GET", api.CHAT_PATH)
    assert res.status == 405 and res.headers["allow"] == "POST"
    assert json.loads(res.body)["error"]["type"] == "invalid_request_error"
    res = await asyncio.to_thread(http_request, srv.port, "GET", api.MODELS_PATH, None, {"Host": "evil.example"})
    assert res.status == HTTPStatus.MISDIRECTED_REQUEST


async def test_completions_share_the_per_address_limit_with_websockets(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, EngineSettings(fps=2.0), limits=Limits(per_address=1, total=8)) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        ask = json.dumps({"model": "livesight/demo", "messages": [user("Hi?")], "max_tokens": 2}).encode()
        assert b" 200 " in (await asyncio.to_thread(exchange, srv.port, post(ask)))[:20]
        async with client(srv.url):
            head, _, body = (await asyncio.to_thread(exchange, srv.port, post(ask))).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 429") and b"Retry-After: 5" in head
            assert json.loads(body)["error"]["type"] == "rate_limit_error"
