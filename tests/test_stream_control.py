"""Streams at run time over the websocket: add_stream, remove_stream, subscribe -> pushed status."""

from __future__ import annotations

import itertools
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from engine.engine import Engine, EngineSettings
from engine.events import StreamStatus
from models.families.smolvlm import SmolVLMAdapter
from stream.policy import SourcePolicy
from stream.source import Source, SourceState, ThreadedSource
from stream.spec import SourceSpec, parse_source
from tests.support.server import Server, client, running_server, until


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 1.5 s, 10 fps video file."""
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        for i in range(15):
            img = np.full((120, 160, 3), i * 15, np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
    return path


def status(stream: str, state: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "status" and m["stream"] == stream and (state is None or m["state"] == state)


async def test_add_subscribe_remove(srv: Server) -> None:
    async with client(srv.url) as a, client(srv.url) as b:
        await a.send({"type": "add_stream", "id": "r1", "name": "scene", "url": "demo"})
        added = await a.recv()
        assert added == {"type": "stream_added", "id": "r1", "stream": "scene", "source": "demo"}

        # Subscribing answers with the current state at once, then pushes every change.
        await b.send({"type": "subscribe", "stream": "scene"})
        first = await b.next(status("scene"))
        assert first["state"] in ("starting", "live")
        assert first["source"] == "demo"
        if first["state"] == "starting":
            await b.next(status("scene", "live"), timeout=10)

        await a.send({"type": "add_stream", "id": "r2", "name": "scene", "url": "demo"})
        dup = await a.recv()
        assert (dup["type"], dup["id"], dup["code"]) == ("error", "r2", "bad_request")

        await a.send({"type": "remove_stream", "id": "r3", "name": "scene"})
        assert await a.next(lambda m: m["type"] == "stream_removed") == {
            "type": "stream_removed",
            "id": "r3",
            "stream": "scene",
        }
        assert (await b.next(status("scene")))["state"] == "removed"
        assert srv.engine.stream_names() == []

        # The subscription is by name: the stream added again is followed again.
        await a.send({"type": "add_stream", "name": "scene", "url": "demo"})
        assert (await b.next(status("scene")))["state"] in ("starting", "live")

        await b.send({"type": "unsubscribe", "stream": "scene"})
        assert await b.next(lambda m: m["type"] == "unsubscribed") == {"type": "unsubscribed", "stream": "scene"}
        assert len(srv.engine.subscriptions) == 0


async def test_errors_have_codes_and_never_show_credentials(srv: Server) -> None:
    async with client(srv.url) as ws:
        await ws.send({"type": "remove_stream", "id": "x1", "name": "ghost"})
        err = await ws.recv()
        assert (err["type"], err["id"], err["code"]) == ("error", "x1", "unknown_stream")
        await ws.send({"type": "subscribe", "stream": "ghost"})
        assert (await ws.recv())["code"] == "unknown_stream"
        await ws.send({"type": "add_stream", "id": "x2", "name": "cam", "url": "ftp://admin:hunter2@10.0.0.9/live"})
        err = await ws.recv()
        assert (err["id"], err["code"]) == ("x2", "bad_request")
        assert "hunter2" not in err["message"]
        assert "admin" not in err["message"]
        await ws.send({"type": "add_stream", "name": "bad name", "url": "demo"})
        assert "invalid stream name" in (await ws.recv())["message"]
        await ws.send({"type": "add_stream", "name": "cam", "url": "/no/such/file.mp4"})
        assert (await ws.recv())["code"] == "bad_request"
        await ws.send({"type": "subscribe", "stream": "cam", "extra": 1})
        assert (await ws.recv())["code"] == "bad_request"
        assert srv.engine.stream_names() == []


async def test_state_changes_made_in_a_reader_thread_are_pushed(tiny: SmolVLMAdapter, clip: Path) -> None:
    policy = SourcePolicy(allow_files=[str(clip.parent)])
    async with running_server(tiny, EngineSettings(fps=2.0), (), policy=policy) as srv, client(srv.url) as ws:
        await ws.send({"type": "add_stream", "name": "clip", "url": str(clip)})
        assert (await ws.recv())["type"] == "stream_added"
        await ws.send({"type": "subscribe", "stream": "clip"})
        seen = [(await ws.next(status("clip")))["state"]]
        while seen[-1] != "ended":
            seen.append((await ws.next(status("clip"), timeout=10))["state"])
        # Every push is a change (no state twice in a row); the end of the file was pushed.
        assert all(x != y for x, y in itertools.pairwise(seen))
        assert seen[0] in ("starting", "live")
        assert len(seen) >= 2
        ended = srv.engine.streams_info()[0]
        assert ended.state == "ended"
        assert ended.frames >= 1


async def test_add_stream_keeps_to_the_allow_lists(tiny: SmolVLMAdapter, clip: Path, tmp_path: Path) -> None:
    """Files only inside --allow-files, cameras only at --allow-hosts; a file that is missing and one that is
    forbidden get the same answer, and a forbidden camera is never connected to."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(clip, allowed / "clip.mp4")
    policy = SourcePolicy(allow_files=[str(allowed)], allow_hosts=["10.0.0.0/8"])
    async with running_server(tiny, EngineSettings(fps=2.0), (), policy=policy) as srv, client(srv.url) as ws:
        answers = []
        for i, url in enumerate([str(clip), str(allowed / "missing.mp4"), "rtsp://127.0.0.1:554/cam"]):
            await ws.send({"type": "add_stream", "id": f"a{i}", "name": f"s{i}", "url": url})
            err = await ws.next(lambda m: m["type"] in ("error", "stream_added"))
            assert (err["type"], err["code"], err["retryable"]) == ("error", "bad_request", False), err
            answers.append(err["message"].replace(str(clip), "X").replace(str(allowed / "missing.mp4"), "X"))
        assert answers[0] == answers[1]  # forbidden and missing say the same
        assert "allow" in answers[2]
        assert srv.engine.stream_names() == []
        await ws.send({"type": "add_stream", "id": "ok", "name": "ok", "url": str(allowed / "clip.mp4")})
        assert (await ws.next(lambda m: m["type"] in ("error", "stream_added")))["type"] == "stream_added"


async def test_disconnecting_drops_subscriptions(srv: Server) -> None:
    async with client(srv.url) as ws:
        await ws.send({"type": "add_stream", "name": "scene", "url": "demo"})
        await ws.recv()
        await ws.send({"type": "subscribe", "stream": "scene"})
        await ws.next(status("scene"))
        assert len(srv.engine.subscriptions) == 1
    async with client(srv.url) as other:
        # A round trip on another connection: the first connection's teardown has run by now.
        await other.send({"type": "streams"})
        await other.recv()
    assert len(srv.engine.subscriptions) == 0


class FlakyCamera(ThreadedSource):
    """A camera (as an RTSP reader would be) that drops out and comes back without its stream ending:
    the states change in the reader thread, with no frame to carry the news."""

    def __init__(self, name: str, fps: float) -> None:
        super().__init__(name, "flaky", fps)
        self.step = threading.Event()

    def _run(self) -> None:
        self.stats.state = SourceState.LIVE
        self._emit(0.0, np.zeros((32, 32, 3), np.uint8))
        for state in (SourceState.RECONNECTING, SourceState.LIVE, SourceState.OFFLINE):
            self.step.wait(10)
            self.step.clear()
            self.stats.state = state
        self._stop.wait(10)


async def test_transitions_without_frames_are_pushed(tiny: SmolVLMAdapter) -> None:
    cams: list[FlakyCamera] = []

    def make(spec: SourceSpec, fps: float) -> Source:
        cams.append(FlakyCamera(spec.name, fps))
        return cams[-1]

    engine = Engine(tiny, EngineSettings(fps=1.0), make)
    await engine.start([parse_source("cam=demo")])
    pushed: list[StreamStatus] = []

    def state(ev: StreamStatus) -> str:
        return "removed" if ev.info is None else ev.info.state

    try:
        engine.subscribe("cam", lambda ev: pushed.append(ev) if isinstance(ev, StreamStatus) else None)
        await until(lambda: state(pushed[-1]) == "live", 5, "live")
        for want in ("reconnecting", "live", "offline"):
            cams[0].step.set()
            await until(lambda w=want: state(pushed[-1]) == w, 5, want)  # type: ignore[misc]
        # Removing the stream pushes one last event: every push before it was a change of state.
        await engine.remove_stream("cam")
        await until(lambda: state(pushed[-1]) == "removed", 5, "removed")
        states = [state(ev) for ev in pushed]
        assert states[-5:] == ["live", "reconnecting", "live", "offline", "removed"]
        assert all(a != b for a, b in itertools.pairwise(states))  # nothing pushed without a change
        assert all(ev.stream == "cam" for ev in pushed)
    finally:
        await engine.close()
