"""Clients that stop reading, and too many clients: bounded, cut off promptly, refused clearly; the others
are served throughout."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.uri import parse_uri

from engine.engine import EngineSettings
from memory.segment import Segment
from models.adapter import Prefix, Turn
from models.families.smolvlm import SmolVLMAdapter
from tests.support.server import TOKEN, Server, client, http_request, running_server, until, wait_for_frames
from web.server import Limits


class Chatty(SmolVLMAdapter):
    """The real tiny adapter whose answers stream many small pieces, one every 5 ms (so a whole answer takes
    seconds and a cancellation shows), recording how each ended."""

    # Not SupportsSteps: the engine answers through generate() below, one piece per step, instead of
    # batched decoding (which tests/test_generation.py and tests/test_interleaving.py cover).
    decode = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: dict[str, bool] = {}  # question -> cancelled

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: Any,
        *,
        recalled: Sequence[Segment] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        try:
            for _ in range(max_new_tokens):
                if cancel.wait(0.005):  # the model's time per token (inference thread)
                    break
                yield "token "
        finally:  # the engine closes a cancelled answer's generator
            self.ended[question] = cancel.is_set()


@pytest.fixture
def chatty(tiny: SmolVLMAdapter) -> Chatty:
    return Chatty(tiny.model, tiny.tokenizer, "tiny-random", default_budget=1024)


async def stuck_client(srv: Server, questions: int, *, deflate: bool) -> socket.socket:
    """A client that authenticates, asks ``questions`` long questions and then never reads another byte
    (websockets' sans-I/O protocol on a plain socket with a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", srv.port))
    extensions = [ClientPerMessageDeflateFactory()] if deflate else None
    proto = ClientProtocol(parse_uri(srv.url), extensions=extensions)
    proto.send_request(proto.connect())
    await loop.sock_sendall(sock, b"".join(proto.data_to_send()))
    proto.receive_data(await loop.sock_recv(sock, 4096))
    assert proto.handshake_exc is None
    assert proto.extensions == []  # the server declines compression (see web/server.py)
    msgs: list[dict[str, Any]] = [{"type": "auth", "token": TOKEN}]
    msgs += [
        {"type": "ask", "id": f"s{i}", "stream": "demo", "question": f"stuck {i}", "max_new_tokens": 1024}
        for i in range(questions)
    ]
    for msg in msgs:
        proto.send_text(json.dumps(msg).encode())
    await loop.sock_sendall(sock, b"".join(proto.data_to_send()))
    return sock


@pytest.mark.parametrize(
    ("deflate", "outbox", "outbox_bytes"),
    [(False, 64, 4 * 2**20), (True, 64, 4 * 2**20), (False, 4096, 2 * 1024)],
    ids=["messages", "messages-deflate-offered", "bytes"],
)
async def test_a_client_that_stops_reading_is_cut_off_at_once_and_its_questions_stop(
    chatty: Chatty, caplog: pytest.LogCaptureFixture, deflate: bool, outbox: int, outbox_bytes: int
) -> None:
    settings = EngineSettings(fps=2.0, max_queue=8)
    async with running_server(chatty, settings, outbox=outbox, outbox_bytes=outbox_bytes) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        for listener in srv.app.sockets():  # a slow network: small kernel buffers on the server side too
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = await stuck_client(srv, 4, deflate=deflate)
        await until(lambda: "not reading" in caplog.text, 60, "the stuck client to be noticed")
        noticed = time.monotonic()
        # Gone within a few seconds: a polite close cannot be sent to it, so the transport is aborted.
        await until(lambda: srv.app.connections == 0, 10, "the stuck connection to be dropped")
        assert time.monotonic() - noticed < 5
        await until(lambda: len(chatty.ended) >= 1, 10, "its answers to stop")
        assert all(chatty.ended.values())  # every one that started was cancelled, not run to the end
        # Others are served throughout.
        async with client(srv.url) as c:
            await c.send({"type": "ask", "id": "fine", "stream": "demo", "question": "ok?", "max_new_tokens": 8})
            final = (await c.until(lambda m: m["type"] in ("answer", "error"), timeout=60))[-1]
            assert final["type"] == "answer"
        sock.close()


async def test_connections_are_limited_per_address_and_in_all(tiny: SmolVLMAdapter) -> None:
    limits = Limits(per_address=3, total=4)
    async with running_server(tiny, EngineSettings(fps=2.0), (), limits=limits) as srv:
        async with client(srv.url), client(srv.url), client(srv.url):
            res = await asyncio.to_thread(
                http_request,
                srv.port,
                "GET",
                "/v1/ws",
                None,
                {
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                },
            )
            assert res.status == 503
            assert "too many connections from your address (at most 3)" in json.loads(res.body)["error"]
            assert res.headers["retry-after"] == "5"
        async with client(srv.url):  # freed when they closed
            assert srv.app.connections == 1
