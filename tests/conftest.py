"""Shared fixtures: the tiny real model, a real server on a free loopback port, websocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from livesight.engine import Engine, EngineSettings
from models.adapter import ModelAdapter
from models.loader import choose_placement, load_model
from models.smolvlm import SmolVLMAdapter
from stream.factory import make_source
from stream.source import Source
from stream.spec import SourceSpec, parse_source
from web.server import WS_PATH, App

TOKEN = "test-token-123"


@pytest.fixture(scope="session")
def tiny() -> SmolVLMAdapter:
    adapter = load_model("tiny-random", choose_placement("cpu"))
    assert isinstance(adapter, SmolVLMAdapter)
    return adapter


def source_factory(spec: SourceSpec, fps: float, realtime: bool) -> Source:
    return make_source(spec, fps, realtime=realtime)


@dataclass
class Running:
    app: App
    engine: Engine
    url: str
    port: int


@asynccontextmanager
async def running_server(
    adapter: ModelAdapter,
    settings: EngineSettings,
    sources: Sequence[str] = ("demo",),
    make: Callable[[SourceSpec, float, bool], Source] = source_factory,
    outbox: int = 4096,
) -> AsyncIterator[Running]:
    """A real App + Engine listening on a free loopback port, torn down afterwards."""
    app = App(TOKEN, getattr(adapter, "model_id", "test"), outbox=outbox)
    await app.listen("127.0.0.1", 0)
    engine = Engine(adapter, settings, make)
    await engine.start([parse_source(s) for s in sources])
    app.engine = engine
    try:
        yield Running(app, engine, f"ws://127.0.0.1:{app.port()}{WS_PATH}", app.port())
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


@asynccontextmanager
async def client(url: str, token: str | None = TOKEN) -> AsyncIterator[Client]:
    async with connect(url, max_size=2**22) as ws:
        c = Client(ws)
        if token is not None:
            await c.send({"type": "auth", "token": token})
            ready = await c.recv()
            assert ready["type"] == "ready", ready
        yield c


async def wait_for_frames(engine: Engine, stream: str, frames: int, timeout: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            info = {s["name"]: s for s in engine.streams_info()}[stream]
            if info["frames"] >= frames:
                return info
            await asyncio.sleep(0.05)
