"""WebRTC ingest end to end: an aiortc peer publishes a synthetic track over WHIP (real HTTP, real ICE/DTLS
on loopback) to a real server with the tiny real model."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import AsyncGenerator
from typing import cast

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

import stream.webrtc
from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from stream.frame import Frame
from stream.webrtc import WebRTCSource
from tests.support.server import client, info, running_server, until
from tests.support.webrtc_peer import SyntheticTrack, loopback_ice, publish, unpublish


@pytest.fixture(autouse=True)
def _loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    loopback_ice(monkeypatch)


def peer_connections() -> int:
    gc.collect()
    return sum(type(o) is RTCPeerConnection for o in gc.get_objects())


def own_threads() -> list[str]:
    """Every thread but the default executor's pool (aiortc's decoder threads among them)."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


async def test_published_frames_reach_memory_and_status_is_pushed(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, EngineSettings(fps=4.0), ()) as srv, client(srv.url) as ws:
        pub = await publish(srv.port, "cam")
        assert pub.location.startswith("/v1/whip/cam/")
        await ws.send({"type": "subscribe", "stream": "cam"})
        first = await ws.recv()
        assert first["type"] == "status"
        assert first["stream"] == "cam"
        assert first["source"] == "webrtc"
        if first["state"] != "live":
            assert (await ws.next(lambda m: m["type"] == "status"))["state"] == "live"

        await until(lambda: getattr(info(srv.engine, "cam"), "memory_frames", 0) >= 3, 20, "frames in memory")
        cam = info(srv.engine, "cam")
        assert cam is not None
        assert cam.state == "live"
        assert cam.memory_tokens > 0
        # Newest-frame semantics: what is in memory is recent, not a backlog.
        assert cam.last_frame_age_s is not None
        assert cam.last_frame_age_s < 2.0

        await ws.send({"type": "ask", "id": "q1", "stream": "cam", "question": "What do you see?"})
        answer = await ws.next(lambda m: m["type"] in ("answer", "error"), timeout=60)
        assert answer["type"] == "answer"
        assert answer["context"]["frames"] >= 3

        # DELETE on the Location ends the session: the stream goes away, subscribers hear it.
        assert await unpublish(srv.port, pub.location) == 200
        assert (await ws.next(lambda m: m["type"] == "status"))["state"] == "removed"
        assert srv.engine.source("cam") is None
        assert await unpublish(srv.port, pub.location) == 404
        await pub.pc.close()


async def test_publisher_closing_ends_the_stream_and_the_name_can_be_reused(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, EngineSettings(fps=4.0), ()) as srv, client(srv.url) as ws:
        pub = await publish(srv.port, "cam")
        source = srv.engine.source("cam")
        assert isinstance(source, WebRTCSource)
        await until(lambda: source.stats.frames >= 1, 10, "a first frame")
        await ws.send({"type": "subscribe", "stream": "cam"})
        await ws.recv()

        await pub.pc.close()  # the publisher goes away (RTCP BYE, DTLS close)
        ended = await ws.next(lambda m: m["type"] == "status" and m["state"] == "ended", timeout=10)
        assert ended["stream"] == "cam"
        await until(lambda: source._pc.connectionState == "closed", 5, "the server's peer connection to close")

        # The same name again: the ended stream is replaced, the subscription carries over.
        pub2 = await publish(srv.port, "cam")
        assert srv.engine.source("cam") is not source
        assert (await ws.next(lambda m: m["type"] == "status"))["state"] == "removed"
        await ws.next(lambda m: m["type"] == "status" and m["state"] == "live", timeout=10)
        await pub2.pc.close()


async def test_a_publisher_that_goes_silent_ends_within_seconds(
    tiny: SmolVLMAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream.webrtc, "STALL_S", 1.0)
    async with running_server(tiny, EngineSettings(fps=4.0), ()) as srv:
        pub = await publish(srv.port, "cam")
        source = srv.engine.source("cam")
        assert isinstance(source, WebRTCSource)
        await until(lambda: source.stats.frames >= 1, 10, "a first frame")
        pub.track.flowing.clear()  # connection stays up, no more video: a frozen or vanished publisher
        await until(lambda: source.stats.state.value == "ended", 5, "the stream to end")
        cam = info(srv.engine, "cam")
        assert cam is not None
        assert cam.state == "ended"
        assert cam.error is not None and "no video" in cam.error
        await until(lambda: source._pc.connectionState == "closed", 5, "the server's peer connection to close")
        await pub.pc.close()


async def test_twenty_publish_cycles_leave_nothing_behind(tiny: SmolVLMAdapter) -> None:
    async def cycle(i: int) -> None:
        pub = await publish(srv.port, "cam")
        source = srv.engine.source("cam")
        assert isinstance(source, WebRTCSource)
        await until(lambda: source.stats.frames >= 1, 10, f"a frame in cycle {i}")
        if i % 2 == 0:
            assert await unpublish(srv.port, pub.location) == 200
            await pub.pc.close()
        else:  # the publisher just leaves; the next publish replaces the ended stream
            await pub.pc.close()
            await until(lambda: source.stats.state.value == "ended", 10, f"the end of cycle {i}")
        await until(lambda: source._pc.connectionState == "closed", 5, "the server's peer connection to close")

    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    async with running_server(tiny, EngineSettings(fps=2.0), ()) as srv:
        await cycle(-1)  # warm-up: lazily started pools (the default executor) exist from here on
        if srv.engine.source("cam") is not None:
            await srv.engine.remove_stream("cam")
        await until(lambda: peer_connections() == 0, 5, "the warm-up's peer connections to be freed")
        await asyncio.sleep(0.5)
        pcs, tasks, threads = peer_connections(), len(asyncio.all_tasks()), own_threads()

        for i in range(20):
            await cycle(i)
        if srv.engine.source("cam") is not None:
            await srv.engine.remove_stream("cam")
        await until(lambda: len(asyncio.all_tasks()) <= tasks, 10, "tasks to finish")
        await until(lambda: own_threads() == threads, 10, f"threads to finish: {own_threads()}")
        # The loop's default executor (to_thread) is a pool: bounded, its idle threads are kept by design.
        pool = [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
        assert len(pool) <= min(32, (os.cpu_count() or 1) + 4)
        await until(lambda: peer_connections() == pcs, 5, "peer connections to be freed")
        assert srv.engine.stream_names() == []
    # Nothing failed unseen (an interrupted aiortc close reports "Task exception was never retrieved").
    assert loop_errors == []


async def test_a_slow_consumer_gets_the_newest_frame_not_a_backlog() -> None:
    """aiortc queues every decoded frame without bound; the source drains it and keeps the newest."""
    source = WebRTCSource("cam", fps=30.0)  # every frame is due: only newest-wins can keep up
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(SyntheticTrack(), direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await source.accept(pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        frames = cast(AsyncGenerator[Frame, None], source.__aiter__())
        first = await anext(frames)
        started = time.monotonic() - first.pts
        lags = []
        for _ in range(4):
            await asyncio.sleep(0.7)  # a consumer far slower than the 30 fps coming in
            frame = await anext(frames)
            lags.append(time.monotonic() - started - frame.pts)
        assert max(lags) < 0.5, lags  # a queue would have fallen ~0.7 s further behind at each step
        assert source.stats.dropped >= 4 * 15  # the frames skipped over were counted
        await frames.aclose()
    finally:
        await pc.close()
        await source.close()


async def test_removing_a_stream_while_its_publisher_hangs_up(tiny: SmolVLMAdapter) -> None:
    """Both ends closing at once: aiortc starts its own close when the peer's DTLS closes, while the
    engine cancels the stream and closes the source; the connection must still close cleanly."""
    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    async with running_server(tiny, EngineSettings(fps=4.0), ()) as srv:
        for delay in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1):
            pub = await publish(srv.port, "cam")
            source = srv.engine.source("cam")
            assert isinstance(source, WebRTCSource)
            await until(lambda s=source: s.stats.frames >= 1, 10, "a first frame")  # type: ignore[misc]
            await pub.pc.close()
            await asyncio.sleep(delay)  # somewhere in the server's own closing
            await srv.engine.remove_stream("cam")
            await until(lambda s=source: s._pc.connectionState == "closed", 5, "the server side to close")  # type: ignore[misc]
        del pub, source
        await until(lambda: peer_connections() == 0, 5, "peer connections to be freed")
    assert loop_errors == []
