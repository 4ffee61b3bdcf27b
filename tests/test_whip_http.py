"""WHIP's plain HTTP on the websocket server's one port: limits, timeouts and clear errors, with real
clients (the standard library's HTTP client and raw sockets)."""

from __future__ import annotations

import asyncio
import json
import random
import socket

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

import web.plain_http
from tests.support.server import TOKEN, Server, client, http_request
from tests.support.webrtc_peer import SyntheticTrack, loopback_ice, unpublish
from web.plain_http import MAX_BODY_BYTES, MAX_HEAD_BYTES

pytestmark = pytest.mark.server(sources=["demo"], fps=1.0)

SDP = {"Content-Type": "application/sdp"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def request(
    srv: Server, method: str, path: str, body: bytes | None = None, /, **headers: str
) -> tuple[int, dict]:
    res = await asyncio.to_thread(http_request, srv.port, method, path, body, {**headers})
    return res.status, {"headers": res.headers, "json": json.loads(res.body) if res.body else None}


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes; read the whole reply (the server closes after answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


async def test_authorization_is_required(srv: Server) -> None:
    status, res = await request(srv, "POST", "/v1/whip/cam", b"v=0\r\n", **SDP)
    assert status == 401
    assert res["headers"]["www-authenticate"].startswith("Bearer")
    status, res = await request(srv, "POST", "/v1/whip/cam", b"v=0\r\n", **SDP, Authorization="Bearer nope")
    assert status == 401
    assert res["json"]["error"] == "wrong token"
    status, _ = await request(srv, "DELETE", "/v1/whip/cam/abc", Authorization="Basic dXNlcjpwYXNz")
    assert status == 401
    # No resource is touched before the token is checked: nothing was created.
    assert srv.engine.stream_names() == ["demo"]


async def test_bad_offers_and_names(srv: Server) -> None:
    status, res = await request(srv, "POST", "/v1/whip/cam", b"this is not sdp", **SDP, **AUTH)
    assert status == 400
    assert "video" in res["json"]["error"] or "SDP" in res["json"]["error"]
    status, _ = await request(srv, "POST", "/v1/whip/cam", b"\xff\xfe", **SDP, **AUTH)
    assert status == 400
    status, _ = await request(srv, "POST", "/v1/whip/cam", b"v=0\r\n", **AUTH, **{"Content-Type": "text/plain"})
    assert status == 415
    status, res = await request(srv, "POST", "/v1/whip/bad%20name!", b"v=0\r\n", **SDP, **AUTH)
    assert status == 400
    assert "invalid stream name" in res["json"]["error"]
    # A failed offer leaves nothing behind.
    assert srv.engine.stream_names() == ["demo"]


async def test_routes_methods_and_conflicts(srv: Server) -> None:
    assert (await request(srv, "POST", "/v1/whip/demo", b"v=0\r\n", **SDP, **AUTH))[0] == 409
    assert (await request(srv, "POST", "/nowhere", b"x", **SDP, **AUTH))[0] == 404
    assert (await request(srv, "POST", "/v1/whip/a/b/c", b"x", **SDP, **AUTH))[0] == 404
    assert (await request(srv, "DELETE", "/v1/whip/demo/not-a-session", **AUTH))[0] == 404
    assert (await request(srv, "DELETE", "/v1/whip/ghost/whatever", **AUTH))[0] == 404
    status, res = await request(srv, "PUT", "/v1/whip/cam", b"x", **AUTH)
    assert status == 405
    assert res["headers"]["allow"] == "POST, OPTIONS"
    status, res = await request(srv, "PATCH", "/v1/whip/cam/sess", b"x", **AUTH)  # no trickle ICE
    assert status == 405
    assert res["headers"]["allow"] == "DELETE"
    status, res = await request(srv, "POST", "/healthz", b"x")
    assert status == 405
    assert res["headers"]["allow"] == "GET"
    assert (await request(srv, "OPTIONS", "/v1/whip/cam"))[0] == 204
    assert (await request(srv, "GET", "/v1/whip/cam"))[0] == 405  # GET goes through websockets' side


async def test_size_limits(srv: Server) -> None:
    # A declared body over the limit is refused before it is read.
    head = f"POST /v1/whip/cam HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    assert status_of(await asyncio.to_thread(raw_exchange, srv.port, head)) == 413
    status, _ = await request(srv, "POST", "/v1/whip/cam", b"v" * (MAX_BODY_BYTES + 1), **SDP, **AUTH)
    assert status == 413
    big = b"POST /v1/whip/cam HTTP/1.1\r\nX-Filler: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    assert status_of(await asyncio.to_thread(raw_exchange, srv.port, big)) == 431
    chunked = b"POST /v1/whip/cam HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert status_of(await asyncio.to_thread(raw_exchange, srv.port, chunked)) == 411
    bad_length = b"POST /v1/whip/cam HTTP/1.1\r\nContent-Length: -4\r\n\r\n"
    assert status_of(await asyncio.to_thread(raw_exchange, srv.port, bad_length)) == 400
    assert status_of(await asyncio.to_thread(raw_exchange, srv.port, b"HELLO there\r\n\r\n")) == 400


async def test_slow_and_vanishing_clients(srv: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web.plain_http, "READ_TIMEOUT_S", 0.5)
    # Headers that never end: 408 after the deadline, the connection closed.
    reply = await asyncio.to_thread(raw_exchange, srv.port, b"POST /v1/whip/cam HTTP/1.1\r\nHost: x\r\n")
    assert status_of(reply) == 408
    # A body shorter than announced: the same.
    short = b"POST /v1/whip/cam HTTP/1.1\r\nContent-Length: 100\r\n\r\nv=0"
    assert status_of(await asyncio.to_thread(raw_exchange, srv.port, short)) == 408

    def hang_up() -> None:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"DELETE /v1/whip/cam/x HTTP/1.1\r\nContent-Le")

    await asyncio.to_thread(hang_up)
    # One port still serves everything: health, the page, the websocket API.
    assert (await request(srv, "GET", "/healthz"))[0] == 200
    page = await asyncio.to_thread(http_request, srv.port, "GET", "/")
    assert page.status == 200 and b'src="/static/publish.js"' in page.body
    script = await asyncio.to_thread(http_request, srv.port, "GET", "/static/publish.js")
    assert script.status == 200 and b"/v1/whip/" in script.body
    async with client(srv.url) as ws:
        await ws.send({"type": "streams"})
        assert (await ws.recv())["type"] == "streams"


async def test_offers_aiortc_cannot_use_are_refused_with_400_and_the_reason(
    srv: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audio-only and 200 mutated offers (deleted, repeated, cut and altered lines) over real HTTP: each is
    answered 201 or 400 with a reason, never a server error, and nothing fails unseen in the background."""
    loopback_ice(monkeypatch)
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    rng = random.Random(7)
    base = await offer(audio=True)
    offers = [await offer(audio=True, video=False)] + [mutate(mutate(base, rng), rng) for _ in range(200)]
    statuses = []
    for i, sdp in enumerate(offers):
        res = await asyncio.to_thread(http_request, srv.port, "POST", f"/v1/whip/m{i}", sdp.encode(), SDP | AUTH)
        statuses.append(res.status)
        if res.status == 201:
            assert await unpublish(srv.port, res.headers["location"]) == 200
        else:
            assert res.status == 400, (res.status, res.body)
            assert json.loads(res.body)["error"], res.body
    assert statuses[0] == 400  # audio only: no video to watch
    assert statuses.count(201) > 20 and statuses.count(400) > 20  # both kinds were exercised
    assert loop_errors == []
    assert srv.engine.stream_names() == ["demo"]


async def offer(*, audio: bool, video: bool = True) -> str:
    """A real offer from an aiortc peer (a synthetic video track, and an audio one if asked)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video:
        pc.addTransceiver(SyntheticTrack(), direction="sendonly")
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def mutate(sdp: str, rng: random.Random) -> str:
    """One random change to one line: deleted, repeated elsewhere, cut short, a character altered, or a
    media kind swapped."""
    lines = sdp.split("\r\n")
    i = rng.randrange(len(lines))
    op = rng.randrange(5)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif op == 2:
        lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    elif op == 3 and lines[i]:
        chars = list(lines[i])
        chars[rng.randrange(len(chars))] = rng.choice("0123456789 =:/ax-")
        lines[i] = "".join(chars)
    else:
        lines[i] = lines[i].replace("video", "audio")
    return "\r\n".join(lines)
