"""The one test harness for a running server: a real App + Engine on a free loopback port, websocket
clients that speak the protocol, plain HTTP requests, and waits with deadlines."""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from engine.engine import Engine, EngineSettings, SourceFactory
from engine.events import StreamInfo
from engine.watches import WatchSpec
from models.adapter import ModelAdapter
from store.events import EventStore
from stream.factory import make_source
from stream.policy import SourcePolicy
from stream.spec import parse_source
from web.auth import Authenticator, Viewer
from web.server import WS_PATH, App, HostCheck, Limits

TOKEN = "test-token-123"


def source_factory(*, lossless: bool = False) -> SourceFactory:
    """The server's own source factory; ``lossless`` reads files and the demo as fast as the model ingests."""
    return functools.partial(make_source, lossless=lossless)


@dataclass
class Server:
    app: App
    engine: Engine
    port: int

    @property
    def url(self) -> str:
        """The websocket URL."""
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"


@asynccontextmanager
async def running_server(
    adapter: ModelAdapter,
    settings: EngineSettings,
    sources: Sequence[str] = ("demo",),
    make: SourceFactory | None = None,
    *,
    lossless: bool = False,
    outbox: int = 4096,
    outbox_bytes: int = 4 * 1024 * 1024,
    viewers: Sequence[Viewer] = (),
    hosts: HostCheck | None = None,
    limits: Limits | None = None,
    policy: SourcePolicy | None = None,
    port: int = 0,
    metrics_public: bool = False,
    token: str = TOKEN,
    events: EventStore | None = None,
    watches: Sequence[WatchSpec] = (),
) -> AsyncIterator[Server]:
    """A real App + Engine listening on loopback ``port`` (0: a free one), torn down afterwards; ``token``
    is the admin token; ``events`` keeps the timeline, ``watches`` start with the engine (as the
    configuration file's do)."""
    app = App(
        Authenticator(token, viewers),
        adapter.model_id,
        outbox=outbox,
        outbox_bytes=outbox_bytes,
        hosts=hosts,
        limits=limits,
        policy=policy,
        metrics_public=metrics_public,
    )
    await app.listen("127.0.0.1", port)
    engine = Engine(adapter, settings, make or source_factory(lossless=lossless), observer=app.metrics, events=events)
    try:
        await engine.start([parse_source(s) for s in sources], watches)
        app.engine = engine
        yield Server(app, engine, app.port())
    finally:
        await app.close()
        await engine.close()


class Client:
    """A websocket client speaking the protocol, with a receive timeout on every read."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, msg: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    async def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> list[dict[str, Any]]:
        """Messages received up to and including the first one matching ``pred``."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv(timeout)
                seen.append(msg)
                if pred(msg):
                    return seen

    async def next(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        """The first message matching ``pred`` (the ones before it are skipped)."""
        return (await self.until(pred, timeout))[-1]


@asynccontextmanager
async def client(url: str, token: str | None = TOKEN) -> AsyncIterator[Client]:
    """A connected client, authenticated with ``token`` unless it is None."""
    async with connect(url, max_size=2**22) as ws:
        c = Client(ws)
        if token is not None:
            await c.send({"type": "auth", "token": token})
            ready = await c.recv()
            assert ready["type"] == "ready", ready
        yield c


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``pred()`` holds, polling; fails naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def info(engine: Engine, name: str) -> StreamInfo | None:
    """Stream ``name`` as ``streams`` reports it, or None if there is no such stream."""
    return next((s for s in engine.streams_info() if s.name == name), None)


async def wait_for_frames(engine: Engine, stream: str, frames: int, timeout: float = 60.0) -> StreamInfo:
    """Wait until ``frames`` frames of ``stream`` reached memory; returns the stream's info then."""
    await until(lambda: (i := info(engine, stream)) is not None and i.frames >= frames, timeout, f"{frames} frames")
    found = info(engine, stream)
    assert found is not None
    return found


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
