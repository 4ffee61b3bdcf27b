"""livesight.client against a real server (the tiny real model, the demo source): the whole protocol as
typed calls, several questions on one connection, typed errors, subscriptions across a server restart,
and the blocking wrapper."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import pytest

from engine.engine import EngineSettings
from livesight.client import (
    Answer,
    BadRequestError,
    BusyError,
    Client,
    ClientClosed,
    ClientError,
    ConnectionFailed,
    Disconnected,
    ForbiddenError,
    Question,
    QuestionCancelled,
    Status,
    StreamInfo,
    Subscription,
    SyncClient,
    TooLargeError,
    UnauthorizedError,
    UnknownStreamError,
)
from livesight.client.subscription import BUFFER
from models.families.smolvlm import SmolVLMAdapter
from stream.backoff import Backoff
from tests.support.server import TOKEN, Server, running_server, until, wait_for_frames
from web.auth import Viewer

SETTINGS = EngineSettings(fps=4.0)
FAST = Backoff(base=0.05, cap=0.5)  # reconnect quickly in tests


@pytest.fixture
async def demo(tiny: SmolVLMAdapter) -> AsyncIterator[Server]:
    """A server with the demo stream, which has frames in memory."""
    async with running_server(tiny, SETTINGS, ("demo",)) as srv:
        await wait_for_frames(srv.engine, "demo", 2)
        yield srv


async def next_status(sub: Subscription, pred: Callable[[Status], bool] | None = None, timeout: float = 30.0) -> Status:
    """The next status from ``sub`` matching ``pred``, within ``timeout`` seconds."""

    async def find() -> Status:
        async for st in sub:
            if pred is None or pred(st):
                return st
        raise AssertionError("the subscription ended")

    return await asyncio.wait_for(find(), timeout)


async def test_ask_streams_pieces_then_the_typed_answer(demo: Server) -> None:
    async with Client(demo.url, TOKEN) as client:
        assert client.ready.streams == ("demo",)
        q = client.ask("demo", "What do you see?", max_new_tokens=16)
        pieces = [piece async for piece in q]
        answer = await q
        assert isinstance(answer, Answer) and answer.id == q.id and q.done()
        assert pieces and "".join(pieces) == answer.text
        assert answer.context.frames > 0 and answer.context.tokens > 0
        assert answer.context.start is not None and answer.context.end is not None
        assert 0 <= answer.context.start <= answer.context.end
        assert 0 <= answer.timing.ttft_ms <= answer.timing.total_ms
        # awaiting again gives the same answer; awaiting without iterating works too
        assert await q == answer
        assert (await client.ask("demo", "And now?", max_new_tokens=4)).text is not None


async def test_two_questions_in_flight_on_one_connection_are_told_apart(demo: Server) -> None:
    async with Client(demo.url, TOKEN) as client:
        first = client.ask("demo", "Describe the scene.", max_new_tokens=24)
        second = client.ask("demo", "What colour is the star?", max_new_tokens=12)
        assert first.id != second.id

        async def read(q: Question) -> tuple[list[str], Answer]:
            pieces = [p async for p in q]
            return pieces, await q

        (p1, a1), (p2, a2) = await asyncio.gather(read(first), read(second))
        assert (a1.id, a2.id) == (first.id, second.id)
        assert "".join(p1) == a1.text and "".join(p2) == a2.text


async def test_cancel_ends_the_question_with_question_cancelled(demo: Server) -> None:
    async with Client(demo.url, TOKEN) as client:
        q = client.ask("demo", "Tell me everything.", max_new_tokens=1024)
        pieces = q.messages()
        await asyncio.wait_for(anext(pieces), 30)  # generation is under way
        q.cancel()
        with pytest.raises(QuestionCancelled) as info:
            await asyncio.wait_for(q.answer(), 30)
        assert info.value.code == "cancelled" and not info.value.retryable
        with pytest.raises(QuestionCancelled):
            async for _ in pieces:
                pass
        q.cancel()  # a finished question: nothing to do
        # the connection goes on
        assert (await client.ask("demo", "Still there?", max_new_tokens=4)).context.frames > 0


async def test_a_session_carries_earlier_turns(demo: Server) -> None:
    async with Client(demo.url, TOKEN) as client:
        one = await client.ask("demo", "Is the ball red?", session="s1", max_new_tokens=6)
        two = await client.ask("demo", "And the square?", session="s1", max_new_tokens=6)
    turns = demo.engine.sessions.turns("demo", "s1")
    assert [(t.question, t.answer) for t in turns] == [("Is the ball red?", one.text), ("And the square?", two.text)]
    assert demo.engine.sessions.turns("demo", "other") == ()


async def test_streams_add_remove_and_a_subscription_that_hears_the_removal(demo: Server) -> None:
    async with Client(demo.url, TOKEN) as client:
        (info,) = await client.streams()
        assert isinstance(info, StreamInfo) and info.name == "demo" and info.frames >= 2
        assert info.memory_span is not None and info.memory_tiers and info.fps == 4.0

        added = await client.add_stream("cam2", "demo")
        assert (added.stream, added.source) == ("cam2", "demo")
        assert {i.name for i in await client.streams()} == {"demo", "cam2"}

        sub = await client.subscribe("cam2")
        first = await next_status(sub)
        assert first.stream == "cam2" and first.state in ("starting", "live")
        info2 = first.info()
        assert info2 is not None and info2.source == "demo"
        # a second subscription of the same stream gets its latest status at once, and is told apart
        other = await client.subscribe("cam2", "demo")
        seen = {(await next_status(other)).stream, (await next_status(other)).stream}
        assert seen == {"cam2", "demo"}

        removed = await client.remove_stream("cam2")
        assert removed.stream == "cam2"
        gone = await next_status(sub, lambda s: s.removed)
        assert gone.stream == "cam2" and gone.info() is None
        await next_status(other, lambda s: s.removed)
        await sub.close()
        await other.close()
        assert [i.name for i in await client.streams()] == ["demo"]

        with pytest.raises(UnknownStreamError) as unknown:
            await client.remove_stream("cam2")
        assert unknown.value.code == "unknown_stream" and not unknown.value.retryable
        with pytest.raises(UnknownStreamError):
            await client.subscribe("demo", "nope")
        with pytest.raises(BadRequestError) as refused:  # outside the allow-lists
            await client.add_stream("file", "/etc/passwd")
        assert refused.value.code == "bad_request"


async def test_subscriptions_made_together_share_the_server_subscription(demo: Server) -> None:
    async with Client(demo.url, TOKEN) as client:
        a, b = await asyncio.gather(client.subscribe("demo"), client.subscribe("demo"))
        assert (await next_status(a)).stream == "demo" and (await next_status(b)).stream == "demo"
        refused = await asyncio.gather(client.subscribe("nope"), client.subscribe("nope"), return_exceptions=True)
        assert [type(r) for r in refused] == [UnknownStreamError, UnknownStreamError]
        await a.close()
        # b still follows demo: a new stream's status does not reach it, demo's removal would
        await client.add_stream("cam4", "demo")
        c = await client.subscribe("cam4")
        await next_status(c)
        await client.remove_stream("cam4")
        assert (await next_status(c, lambda s: s.removed)).stream == "cam4"
        assert b.streams == {"demo"} and [s async for s in a] == []


async def test_a_slow_reader_keeps_the_newest_updates() -> None:
    sub: Subscription[Status] = Subscription(("cam",), lambda s: None)
    for i in range(BUFFER + 10):
        sub.deliver(Status(stream="cam", state="live", frames=i))
    assert sub.dropped == 10
    assert (await sub.__anext__()).frames == 10
    await sub.close()
    assert [s async for s in sub] == []


async def test_errors_are_typed_and_say_whether_to_retry(demo: Server) -> None:
    with pytest.raises(UnauthorizedError) as wrong:
        await Client.connect(demo.url, "not-the-token")
    assert wrong.value.code == "unauthorized" and "unauthorized" in str(wrong.value)

    async with Client(demo.url, TOKEN) as client:
        with pytest.raises(UnknownStreamError):
            await client.ask("demo-nope", "Anyone?")
        # Checked here, before anything is sent: the same errors the server would give.
        with pytest.raises(BadRequestError, match="max_new_tokens"):
            client.ask("demo", "x", max_new_tokens=5000)
        with pytest.raises(TooLargeError):
            client.ask("demo", "\x01" * 4000)  # each is sent as \\u0001: 24 KB
        # The server answers 4 questions per connection at a time: a fifth is busy, retryably.
        held = [client.ask("demo", f"Long answer {i}?", max_new_tokens=1024) for i in range(4)]
        with pytest.raises(BusyError) as busy:
            await client.ask("demo", "One more?")
        assert busy.value.retryable and busy.value.code == "busy"
        for q in held:
            q.cancel()
        for q in held:
            with pytest.raises(QuestionCancelled):
                await asyncio.wait_for(q.answer(), 30)
        # the connection survived every error
        assert (await client.ask("demo", "Fine?", max_new_tokens=4)).context.frames > 0


async def test_a_viewer_token_is_forbidden_to_add_streams(tiny: SmolVLMAdapter) -> None:
    viewer = Viewer("lobby", "viewer-token-456", frozenset({"demo"}))
    async with (
        running_server(tiny, SETTINGS, ("demo",), viewers=[viewer]) as srv,
        Client(srv.url, viewer.token) as client,
    ):
        with pytest.raises(ForbiddenError) as info:
            await client.add_stream("cam", "demo")
        assert info.value.code == "forbidden" and not info.value.retryable


async def test_connection_failures_are_retryable_and_closing_fails_what_waits(demo: Server) -> None:
    with pytest.raises(ConnectionFailed) as unreachable:
        await Client.connect("ws://127.0.0.1:9/v1/ws", TOKEN, open_timeout=5)
    assert unreachable.value.retryable
    with pytest.raises(ConnectionFailed) as bad_url:
        await Client.connect("http://127.0.0.1:9/", TOKEN)
    assert not bad_url.value.retryable

    client = await Client.connect(demo.url, TOKEN)
    q = client.ask("demo", "Long?", max_new_tokens=1024)
    sub = await client.subscribe("demo")
    await client.close()
    with pytest.raises(ClientClosed):
        await q

    async def rest() -> list[Status]:
        return [s async for s in sub]

    assert all(s.stream == "demo" for s in await asyncio.wait_for(rest(), 5))  # it ends, it does not wait
    with pytest.raises(ClientClosed):
        await client.streams()


async def test_a_subscription_survives_a_server_restart(tiny: SmolVLMAdapter) -> None:
    changes: list[bool] = []
    async with running_server(tiny, SETTINGS, ("demo",)) as first:
        port = first.port
        client = await Client.connect(first.url, TOKEN, backoff=FAST, on_connection=lambda up, why: changes.append(up))
        sub = await client.subscribe("demo")
        assert (await next_status(sub)).stream == "demo"
        question = client.ask("demo", "Long?", max_new_tokens=1024)
    # The server is gone: what was in flight failed, retryably; the subscription waits.
    with pytest.raises(Disconnected) as dropped:
        await asyncio.wait_for(question.answer(), 30)
    assert dropped.value.retryable
    await until(lambda: changes == [False], 10, "the client to notice the drop")
    with pytest.raises(Disconnected):
        await client.streams()
    try:
        async with running_server(tiny, SETTINGS, ("demo",), port=port) as second:
            # the client reconnects by itself and subscribes again: the subscription hears the new server
            await until(lambda: changes == [False, True], 30, "the client to reconnect")
            back = await next_status(sub, lambda s: s.stream == "demo" and not s.removed)
            assert back.state in ("starting", "live")
            await wait_for_frames(second.engine, "demo", 1)
            assert (await client.ask("demo", "Are you back?", max_new_tokens=4)).context.frames > 0
    finally:
        await client.close()


async def test_a_stream_gone_after_a_restart_reads_as_removed(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, SETTINGS, ("demo", "cam=demo")) as first:
        port = first.port
        client = await Client.connect(first.url, TOKEN, backoff=FAST)
        sub = await client.subscribe("cam")
        await next_status(sub)
    try:
        async with running_server(tiny, SETTINGS, ("demo",), port=port):
            gone = await next_status(sub, lambda s: s.removed)
            assert gone.stream == "cam"
            # nothing is followed any more: the iteration ends
            assert [s async for s in sub if not s.removed] == []
    finally:
        await client.close()


async def test_a_refused_token_on_reconnection_ends_the_subscription(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, SETTINGS, ("demo",)) as first:
        port = first.port
        client = await Client.connect(first.url, TOKEN, backoff=FAST)
        sub = await client.subscribe("demo")
        await next_status(sub)
    try:
        # the server comes back with another admin token: retrying cannot help, so the client stops
        async with running_server(tiny, SETTINGS, ("demo",), port=port, token="a-new-admin-token"):
            with pytest.raises(UnauthorizedError):
                await next_status(sub, lambda s: False)
            with pytest.raises(UnauthorizedError):
                await client.streams()
    finally:
        await client.close()


async def test_the_sync_client_does_the_same_from_plain_threads(demo: Server) -> None:
    def script() -> tuple[list[str], Answer, tuple[StreamInfo, ...], Status, str]:
        with SyncClient(demo.url, TOKEN) as client:
            q = client.ask("demo", "What do you see?", max_new_tokens=12)
            pieces = list(q)
            answer = q.answer(timeout=30)
            infos = client.streams()
            client.add_stream("cam3", "demo")
            with client.subscribe("cam3") as sub:
                first = sub.next(timeout=30)
                client.remove_stream("cam3")
                while not (last := sub.next(timeout=30)).removed:
                    pass
            cancelled = client.ask("demo", "Long?", max_new_tokens=1024)
            cancelled.cancel()
            try:
                cancelled.answer(timeout=30)
                outcome = "answered"
            except QuestionCancelled:
                outcome = "cancelled"
            assert last.stream == "cam3"
            return pieces, answer, infos, first, outcome

    pieces, answer, infos, first, outcome = await asyncio.to_thread(script)
    assert "".join(pieces) == answer.text and answer.context.frames > 0
    assert [i.name for i in infos] == ["demo"]
    assert first.stream == "cam3" and outcome == "cancelled"

    def refused() -> ClientError:
        try:
            SyncClient(demo.url, "not-the-token")
        except ClientError as exc:
            return exc
        raise AssertionError("a wrong token was accepted")

    assert isinstance(await asyncio.to_thread(refused), UnauthorizedError)


def test_importing_the_client_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, livesight.client, livesight.client_commands, livesight.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
