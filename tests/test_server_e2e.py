"""End to end over a real websocket: a real server, the tiny real model, the demo source."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.uri import parse_uri

from engine.engine import EngineSettings
from memory.segment import Segment
from models.adapter import Prefix, Turn
from models.families.smolvlm import SmolVLMAdapter
from tests.support.server import TOKEN, client, running_server, until, wait_for_frames
from web.protocol import MAX_MESSAGE_BYTES

FAIL = "please fail inside the model"


class RecordingAdapter(SmolVLMAdapter):
    """The real tiny adapter, recording what each generation was given and how it ended; one magic
    question makes it raise, so the test can see an ``internal`` error and that the server survives."""

    # Not SupportsSteps: the engine answers through generate() below, one piece per step, instead of
    # batched decoding (which tests/test_generation.py and tests/test_interleaving.py cover).
    decode = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turns_seen: dict[str, tuple[Turn, ...]] = {}
        self.ended: dict[str, tuple[int, bool]] = {}  # question -> (pieces generated, cancelled)

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
        *,
        recalled: Sequence[Segment] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        self.turns_seen[question] = tuple(turns)
        if question == FAIL:
            raise RuntimeError("simulated failure inside the model")
        n = 0
        try:
            for piece in super().generate(
                prefix, turns, question, max_new_tokens, cancel, recalled=recalled, detail=detail
            ):
                n += 1
                yield piece
        finally:  # the engine closes a cancelled answer's generator
            self.ended[question] = (n, cancel.is_set())


@pytest.fixture
def recording(tiny: SmolVLMAdapter) -> RecordingAdapter:
    return RecordingAdapter(tiny.model, tiny.tokenizer, "tiny-random", default_budget=1024)


def ask(qid: str, question: str = "What do you see?", **extra: Any) -> dict[str, Any]:
    return {"type": "ask", "id": qid, "stream": "demo", "question": question, **extra}


async def test_protocol_end_to_end(recording: RecordingAdapter) -> None:
    settings = EngineSettings(fps=4.0, max_queue=2)
    async with running_server(recording, settings) as srv:
        await wait_for_frames(srv.engine, "demo", 3)

        # Health check on the same port: liveness for anyone, details with the token.
        url = f"http://127.0.0.1:{srv.port}/healthz"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert json.loads(body) == {"status": "ok"}
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        health = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=5).read()))
        assert health["status"] == "ok" and health["streams"][0]["name"] == "demo"

        async with client(srv.url) as c:
            # streams
            await c.send({"type": "streams"})
            (info,) = (await c.recv())["streams"]
            assert info["name"] == "demo" and info["source"] == "demo" and info["state"] == "live"
            assert info["frames"] >= 3 and info["memory_tokens"] > 0 and info["fps"] == 4.0
            assert set(info) >= {
                "name",
                "source",
                "state",
                "fps",
                "frames",
                "dropped",
                "memory_tokens",
                "last_frame_age_s",
            }

            # ask: streamed tokens, then the whole answer with its context and timing
            await c.send(ask("q1", max_new_tokens=24))
            msgs = await c.until(lambda m: m["type"] == "answer")
            tokens = [m for m in msgs if m["type"] == "token"]
            answer = msgs[-1]
            assert tokens and all(m["id"] == "q1" for m in tokens)
            assert "".join(m["text"] for m in tokens) == answer["text"]
            ctx = answer["context"]
            assert ctx["frames"] > 0 and ctx["tokens"] > 0 and 0 <= ctx["start"] <= ctx["end"]
            assert set(answer["timing"]) == {"queue_ms", "ttft_ms", "total_ms"}
            assert answer["timing"]["ttft_ms"] <= answer["timing"]["total_ms"]

            # cancel: a long generation, cancelled once it is under way, stops and says so
            await c.send(ask("long", "Tell me everything.", max_new_tokens=1024))
            await c.until(lambda m: m.get("id") == "long" and m["type"] == "token")
            await c.send({"type": "cancel", "id": "long"})
            msgs = await c.until(lambda m: m.get("id") == "long" and m["type"] in ("cancelled", "answer"))
            assert msgs[-1]["type"] == "cancelled"
            generated, cancelled = recording.ended["Tell me everything."]
            assert cancelled and generated < 1024
            # cancel while still queued: answered at once, never generated
            await c.send(ask("w1", "Wait one.", max_new_tokens=1024))
            await c.send(ask("w2", "Wait two.", max_new_tokens=4))
            await c.send({"type": "cancel", "id": "w2"})
            await c.send({"type": "cancel", "id": "w1"})
            msgs = await c.until(lambda m: m.get("id") == "w1" and m["type"] in ("cancelled", "answer"))
            assert {m["id"] for m in msgs if m["type"] == "cancelled"} == {"w1", "w2"}
            assert "Wait two." not in recording.turns_seen

            # a two-turn session: the second turn's context holds the first turn
            await c.send(ask("t1", "Is the ball red?", session="s1", max_new_tokens=8))
            first = (await c.until(lambda m: m["type"] == "answer" and m["id"] == "t1"))[-1]
            await c.send(ask("t2", "And the square?", session="s1", max_new_tokens=8))
            second = (await c.until(lambda m: m["type"] == "answer" and m["id"] == "t2"))[-1]
            assert recording.turns_seen["Is the ball red?"] == ()
            assert recording.turns_seen["And the square?"] == (Turn("Is the ball red?", first["text"]),)
            assert srv.engine.sessions.turns("demo", "s1")[-1] == Turn("And the square?", second["text"])
            # another session, and no session, see no history
            await c.send(ask("t3", "Is it raining?", session="s2", max_new_tokens=4))
            await c.until(lambda m: m["type"] == "answer" and m["id"] == "t3")
            assert recording.turns_seen["Is it raining?"] == ()

            # every error code; the connection stays open through all of them
            bad: list[tuple[Any, str]] = [
                ("not json", "bad_request"),
                ("[" * 5000, "bad_request"),  # nested too deeply for the JSON parser
                (b"\x00binary", "bad_request"),
                ({"type": "dance"}, "bad_request"),
                ({"type": "ask", "id": "m", "stream": "demo"}, "bad_request"),  # missing field
                (ask("typed", max_new_tokens="many"), "bad_request"),  # ill-typed
                ({"type": "cancel", "id": "nobody"}, "bad_request"),
                ("x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
                ({**ask("u"), "stream": "nope"}, "unknown_stream"),
                (ask("boom", FAIL), "internal"),
            ]
            for msg, code in bad:
                await c.send(msg)
                err = (await c.until(lambda m: m["type"] == "error"))[-1]
                assert err["code"] == code, (msg, err)
                assert err["message"] and err["retryable"] is False
            err_with_id = {**ask("u2"), "stream": "nope"}
            await c.send(err_with_id)
            assert (await c.until(lambda m: m["type"] == "error"))[-1]["id"] == "u2"

            # busy: the queue holds 2 waiting questions; the rest are refused, retryably
            for i in range(4):
                await c.send(ask(f"b{i}", max_new_tokens=1024))
            busy = (await c.until(lambda m: m["type"] == "error"))[-1]
            assert busy["code"] == "busy" and busy["retryable"] is True
            for i in range(4):
                await c.send({"type": "cancel", "id": f"b{i}"})
            # Each ends: a queued one is cancelled; a refused one's cancel names no active question.
            ends: dict[str, str] = {}

            def settled(m: dict[str, Any]) -> bool:
                if m["type"] in ("cancelled", "answer") or m.get("code") == "bad_request":
                    ends[m["id"]] = m["type"]
                return len(ends) == 4

            await c.until(settled)
            assert "cancelled" in ends.values()

        # unauthorized: wrong token, and no auth message at all; both close with 1008
        for first_msg in ({"type": "auth", "token": "wrong-token"}, {"type": "streams"}):
            async with connect(srv.url) as ws:
                await ws.send(json.dumps(first_msg))
                err = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert err["type"] == "error" and err["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

        # after all that, a normal question on a new connection is still answered
        async with client(srv.url) as c:
            await c.send(ask("after", max_new_tokens=8))
            final = (await c.until(lambda m: m["type"] in ("answer", "error")))[-1]
            assert final["type"] == "answer" and final["context"]["frames"] > 0


async def test_cross_origin_websocket_is_refused(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, EngineSettings(fps=2.0)) as srv:
        with pytest.raises(Exception, match="403"):
            async with connect(srv.url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        async with connect(srv.url, origin=f"http://127.0.0.1:{srv.port}"):  # type: ignore[arg-type]
            pass


async def test_a_client_that_stops_reading_is_dropped_and_others_are_served(
    recording: RecordingAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(recording, EngineSettings(fps=2.0, max_queue=8), outbox=16) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        # A slow network: small kernel buffers (accepted sockets inherit the listener's send buffer).
        for listener in srv.app.sockets():
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # The stuck client speaks websocket through websockets' sans-I/O protocol on a plain socket,
        # asks for long answers, and then never reads another byte.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", srv.port))
        proto = ClientProtocol(parse_uri(srv.url))
        proto.send_request(proto.connect())
        await loop.sock_sendall(sock, b"".join(proto.data_to_send()))
        proto.receive_data(await loop.sock_recv(sock, 4096))
        assert proto.handshake_exc is None
        for msg in [{"type": "auth", "token": TOKEN}] + [
            ask(f"s{i}", f"stuck {i}", max_new_tokens=1024) for i in range(4)
        ]:
            proto.send_text(json.dumps(msg).encode())
        await loop.sock_sendall(sock, b"".join(proto.data_to_send()))

        # Another client is still served.
        async with client(srv.url) as c:
            await c.send(ask("fine", max_new_tokens=8))
            final = (await c.until(lambda m: m["type"] == "answer", timeout=120))[-1]
            assert final["id"] == "fine"
        # The stuck client is cut off for not reading (answers run side by side now, so "fine" may well
        # finish first), and its questions are cancelled, not run to their 1,024 tokens.
        await until(lambda: any("not reading" in r.getMessage() for r in caplog.records), 120, "the cut-off")
        started = [q for q in recording.turns_seen if q.startswith("stuck")]
        assert started  # at least one was being answered when it stopped reading
        await until(lambda: all(q in recording.ended for q in started), 60, "the stuck answers to end")
        stuck_ends = [recording.ended[q] for q in started]
        assert all(cancelled and n < 1024 for n, cancelled in stuck_ends), stuck_ends
        sock.close()
