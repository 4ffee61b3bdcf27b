"""``serve --ray`` on a real local Ray cluster (loopback, CPU, the tiny model): one gateway (the real App,
websockets on loopback) in front of two shard actors, each its own worker process with its own model.

Four demo streams are placed two per shard; each is asked a question over its own websocket connection.
Then one shard's process is killed with SIGKILL: the answer it was giving ends with a retryable
``unavailable`` error, its streams' subscribers see ``reconnecting`` and then ``live`` again once Ray has
restarted the actor, with the memory span rebuilt from the archive, and no websocket connection to the
gateway drops; the other shard's streams never stop. Finally a stream is moved to the other shard and
comes back there with its memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cluster.gateway import Gateway, open_gateway
from engine.build import EngineRecipe
from engine.engine import EngineSettings
from stream.spec import parse_source
from tests.support.server import TOKEN, http_request
from tests.support.webrtc_peer import loopback_ice, publish, unpublish
from web.auth import Authenticator
from web.server import WS_PATH, App

#: How long a killed shard's streams may take to be live again (docs/design.md states it; measured on a
#: loaded 2-core machine: docs/benchmarks.md).
RESTART_BOUND_S = 30.0

STREAMS = ("cam0", "cam1", "cam2", "cam3")


@asynccontextmanager
async def ray_server(data: Path) -> AsyncIterator[tuple[App, Gateway]]:
    """The App of ``serve`` with the gateway of ``serve --ray local --shards 2`` behind it."""
    app = App(Authenticator(TOKEN), "tiny-random")
    await app.listen("127.0.0.1", 0)
    recipe = EngineRecipe(
        model="tiny-random", settings=EngineSettings(fps=2.0, ended_ttl_s=None), device="cpu", data_dir=str(data)
    )
    try:
        specs = [parse_source(f"{name}=demo") for name in STREAMS]
        gateway = await open_gateway(recipe, specs, address="local", shards=2, observer=app.metrics)
    except BaseException:
        await app.close()
        raise
    app.engine = gateway
    try:
        yield app, gateway
    finally:
        await gateway.shutdown()
        await app.drain()
        await app.close()
        await gateway.close()


class Watcher:
    """One websocket connection to the gateway, every message it receives kept (read by its own task)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.closed: str | None = None  # why the connection ended, if it did
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name=f"watcher:{id(self)}")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.seen.append(json.loads(raw))
                self._new.set()
        except ConnectionClosed as exc:
            self.closed = repr(exc)
        else:
            self.closed = "closed by the server"
        self._new.set()

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, since: int = 0) -> dict[str, Any]:
        """The first message from index ``since`` on that matches ``pred``."""
        async with asyncio.timeout(timeout):
            i = since
            while True:
                while i < len(self.seen):
                    if pred(self.seen[i]):
                        return self.seen[i]
                    i += 1
                assert self.closed is None, f"the connection dropped: {self.closed}"
                self._new.clear()
                await self._new.wait()

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.ws.close()


@asynccontextmanager
async def watcher(port: int, stream: str) -> AsyncIterator[Watcher]:
    async with connect(f"ws://127.0.0.1:{port}{WS_PATH}") as ws:
        await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert ready["type"] == "ready" and set(ready["streams"]) == set(STREAMS), ready
        w = Watcher(ws)
        try:
            await w.send({"type": "subscribe", "stream": stream})
            yield w
        finally:
            await w.close()


def status_of(stream: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "status" and m["stream"] == stream and m["state"] == state


def reply_to(rid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("id") == rid


def final(qid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("id") == qid and m["type"] in ("answer", "error", "cancelled")


async def archived(gateway: Gateway, clips: int, timeout: float) -> None:
    """Until every stream is live with at least ``clips`` clips in the archive."""
    async with asyncio.timeout(timeout):
        while not all(i.state == "live" and i.archive and i.archive.clips >= clips for i in gateway.streams_info()):
            await asyncio.sleep(0.1)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_a_killed_shard_comes_back_with_its_streams_and_no_client_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loopback_ice(monkeypatch)
    async with ray_server(tmp_path / "data") as (app, gateway), AsyncExitStack() as stack:
        # Placed by load: two streams on each shard, each shard its own process.
        placed = {name: gateway.shard_of(name) for name in STREAMS}
        shards = {name: shard for name, shard in placed.items() if shard is not None}
        assert sorted(shards.values()) == [0, 0, 1, 1], placed
        pids = gateway.shard_pids()
        assert None not in pids and len(set(pids)) == 2 and os.getpid() not in pids

        clients = {name: await stack.enter_async_context(watcher(app.port(), name)) for name in STREAMS}
        for name, c in clients.items():
            await c.wait(status_of(name, "live"), 60)
        await archived(gateway, clips=2, timeout=60)

        # A question on each stream, over its own connection, answered by the stream's shard.
        for name, c in clients.items():
            await c.send({"type": "ask", "id": f"first-{name}", "stream": name, "question": "What moves?"})
        for name, c in clients.items():
            answer = await c.wait(final(f"first-{name}"), 60)
            assert answer["type"] == "answer" and answer["context"]["frames"] > 0, answer
        # Each stream's picture, fetched from its shard through the gateway's HTTP.
        for name in STREAMS:
            pic = await asyncio.to_thread(
                http_request, app.port(), "GET", f"/v1/streams/{name}/snapshot.jpg", None, AUTH
            )
            assert pic.status == 200 and pic.body[:2] == b"\xff\xd8" and len(pic.body) > 1000, (name, pic.status)

        victim = shards["cam1"]
        lost = [n for n in STREAMS if shards[n] == victim]
        kept = [n for n in STREAMS if shards[n] != victim]
        before = {n: gateway.stream_info(n) for n in lost}
        marks = {n: len(c.seen) for n, c in clients.items()}

        # An answer in flight on the shard that dies: killed as its first token arrives.
        asker = clients["cam1"]
        long = {"type": "ask", "id": "cut", "stream": "cam1", "question": "Describe it.", "max_new_tokens": 1024}
        await asker.send(long)
        await asker.wait(lambda m: m["type"] == "token" and m["id"] == "cut", 60, since=marks["cam1"])
        killed_at = time.monotonic()
        victim_pid = pids[victim]
        assert victim_pid is not None
        os.kill(victim_pid, signal.SIGKILL)

        cut = await asker.wait(final("cut"), 30, since=marks["cam1"])
        assert cut["type"] == "error" and cut["code"] == "unavailable" and cut["retryable"] is True, cut
        for n in lost:
            await clients[n].wait(status_of(n, "reconnecting"), 30, since=marks[n])
        for n in lost:
            back = await clients[n].wait(status_of(n, "live"), RESTART_BOUND_S, since=marks[n])
            # The memory came back from the archive: it reaches as far back as before the kill.
            span_before = before[n].memory_span
            assert span_before is not None and back["memory_span"] is not None
            assert back["restored_frames"] > 0, back
            assert back["memory_span"][0] <= span_before[0] + 1e-6, (span_before, back["memory_span"])
        took = time.monotonic() - killed_at
        print(f"shard {victim} killed: its streams live again {took:.1f} s later (gateway: {gateway.restart_times})")
        assert took < RESTART_BOUND_S
        assert gateway.shard_pids()[victim] not in (None, victim_pid)  # a new process

        # No error storm: apart from the answer cut short, the clients heard statuses only.
        for n, c in clients.items():
            errors = [m for m in c.seen[marks[n] :] if m["type"] == "error" and m.get("id") != "cut"]
            assert not errors, (n, errors)
        for n in kept:  # the other shard's streams never left live
            states = [m["state"] for m in clients[n].seen[marks[n] :] if m["type"] == "status"]
            assert set(states) <= {"live"}, (n, states)

        # Every connection is still up and answered by the shards, the restarted one included.
        for name, c in clients.items():
            mark = len(c.seen)
            await c.send({"type": "ask", "id": f"again-{name}", "stream": name, "question": "And now?"})
            answer = await c.wait(final(f"again-{name}"), 60, since=mark)
            assert answer["type"] == "answer", answer
        assert all(c.closed is None for c in clients.values())

        # Moving a stream: stopped on its shard, started on the other with its memory from the archive.
        moved = kept[0]
        target = victim
        span = gateway.stream_info(moved).memory_span
        mark = len(clients[moved].seen)
        await gateway.move(moved, target)
        assert gateway.shard_of(moved) == target
        await clients[moved].wait(status_of(moved, "reconnecting"), 10, since=mark)
        there = await clients[moved].wait(status_of(moved, "live"), 60, since=mark)
        assert span is not None and there["restored_frames"] > 0 and there["memory_span"][0] <= span[0] + 1e-6
        mark = len(clients[moved].seen)
        await clients[moved].send({"type": "ask", "id": "moved", "stream": moved, "question": "Still there?"})
        answer = await clients[moved].wait(final("moved"), 60, since=mark)
        assert answer["type"] == "answer", answer

        # Watches are not forwarded to shards yet: refused with a typed, non-retryable error.
        c = clients["cam0"]
        mark = len(c.seen)
        await c.send({"type": "watch", "id": "w1", "stream": "cam0", "condition": "Is the light on?"})
        await c.send({"type": "events", "id": "e1"})
        for rid in ("w1", "e1"):
            refused = await c.wait(reply_to(rid), 10, since=mark)
            assert refused["type"] == "error" and refused["code"] == "bad_request" and not refused["retryable"]
            assert "not available with --ray" in refused["message"], refused

        # Streams added and removed at run time over the websocket go to the least loaded shard.
        loads = [sum(1 for n in STREAMS if gateway.shard_of(n) == i) for i in (0, 1)]
        mark = len(c.seen)
        await c.send({"type": "add_stream", "id": "a1", "name": "extra", "url": "demo"})
        added = await c.wait(reply_to("a1"), 10, since=mark)
        assert added["type"] == "stream_added", added
        assert gateway.shard_of("extra") == loads.index(min(loads))
        await c.send({"type": "subscribe", "stream": "extra"})
        await c.wait(status_of("extra", "live"), 60, since=mark)
        await c.send({"type": "remove_stream", "id": "r1", "name": "extra"})
        removed = await c.wait(reply_to("r1"), 20, since=mark)
        assert removed["type"] == "stream_removed", removed
        await c.wait(status_of("extra", "removed"), 10, since=mark)
        assert "extra" not in gateway.stream_names()

        # A WHIP publisher: its WebRTC connection ends at the gateway, its frames reach a shard's memory.
        loads = [sum(1 for n in STREAMS if gateway.shard_of(n) == i) for i in (0, 1)]
        publisher = await publish(app.port(), "pub")
        try:
            assert gateway.shard_of("pub") == loads.index(min(loads))  # the less loaded shard
            async with asyncio.timeout(60):
                while (info := gateway.stream_info("pub")).frames < 2 or info.state != "live":
                    await asyncio.sleep(0.1)
            assert await unpublish(app.port(), publisher.location) == 200
            assert "pub" not in gateway.stream_names()
        finally:
            await publisher.pc.close()
        assert all(c.closed is None for c in clients.values())
