"""Test helpers for WebRTC ingest: a real livesight server, an aiortc publisher speaking WHIP over real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack
from websockets.asyncio.client import ClientConnection, connect

from livesight.engine import Engine, EngineSettings
from models.adapter import ModelAdapter
from stream.factory import make_source
from stream.source import Source
from stream.spec import SourceSpec, parse_source
from web.server import WS_PATH, App

TOKEN = "webrtc-test-token"


def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ICE on loopback: aioice leaves 127.0.0.1 out of its host candidates."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def _source(spec: SourceSpec, fps: float, realtime: bool) -> Source:
    return make_source(spec, fps, realtime=realtime)


@dataclass
class Server:
    app: App
    engine: Engine
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"


@asynccontextmanager
async def running(
    adapter: ModelAdapter, settings: EngineSettings, sources: Sequence[str] = ()
) -> AsyncIterator[Server]:
    app = App(TOKEN, "tiny-random")
    await app.listen("127.0.0.1", 0)
    engine = Engine(adapter, settings, _source)
    await engine.start([parse_source(s) for s in sources])
    app.engine = engine
    try:
        yield Server(app, engine, app.port())
    finally:
        await app.close()
        await engine.close()


class SyntheticTrack(VideoStreamTrack):
    """A 320x240 moving gradient at 30 fps; clearing ``flowing`` stops the frames without ending the track
    (a publisher that vanished without a word)."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def recv(self) -> av.VideoFrame:
        await self.flowing.wait()
        pts, time_base = await self.next_timestamp()
        img = np.zeros((240, 320, 3), np.uint8)
        img[:, :, 0] = np.uint8(pts // 3000 % 256)
        img[:, :, 1] = np.arange(320, dtype=np.uint8)[None, :]
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> HttpResult:
    """One request with the standard library's HTTP client (blocking: run it with asyncio.to_thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return HttpResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class Publisher:
    pc: RTCPeerConnection
    track: SyntheticTrack
    location: str


async def publish(port: int, name: str, token: str = TOKEN) -> Publisher:
    """An aiortc peer publishing a synthetic track to ``/v1/whip/<name>``; raises on any status but 201."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = SyntheticTrack()
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
    res = await asyncio.to_thread(
        http_request, port, "POST", f"/v1/whip/{name}", pc.localDescription.sdp.encode(), headers
    )
    if res.status != 201:
        await pc.close()
        raise AssertionError(f"WHIP POST answered {res.status}: {res.body!r}")
    assert res.headers["content-type"] == "application/sdp"
    await pc.setRemoteDescription(RTCSessionDescription(res.body.decode(), "answer"))
    return Publisher(pc, track, res.headers["location"])


async def unpublish(port: int, location: str, token: str = TOKEN) -> int:
    res = await asyncio.to_thread(http_request, port, "DELETE", location, None, {"Authorization": f"Bearer {token}"})
    return res.status


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def info(engine: Engine, name: str) -> dict[str, Any] | None:
    return next((s for s in engine.streams_info() if s["name"] == name), None)


class WsClient:
    """An authenticated websocket client with a timeout on every read."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def recv(self, timeout: float = 20.0) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if pred(msg):
                return msg


@asynccontextmanager
async def ws_client(server: Server) -> AsyncIterator[WsClient]:
    async with connect(server.ws_url) as ws:
        client = WsClient(ws)
        await client.send({"type": "auth", "token": TOKEN})
        assert (await client.recv())["type"] == "ready"
        yield client
