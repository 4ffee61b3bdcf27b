"""``GET /v1/streams/<name>/snapshot.jpg`` over real HTTP on a running server: the stream's newest frame as
a JPEG that decodes to the frame the source delivered, the token and the viewer's streams enforced, typed
404s, and one encoding per frame however many ask."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from stream.demo import HEIGHT, WIDTH, render
from tests.support.server import TOKEN, HttpResult, http_request, running_server, wait_for_frames
from web.auth import Viewer

SETTINGS = EngineSettings(fps=2.0)
VIEWER = "viewer-token-1"


async def get(port: int, path: str, token: str | None = TOKEN) -> HttpResult:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await asyncio.to_thread(http_request, port, "GET", path, None, headers)


def error_code(r: HttpResult) -> str:
    assert r.headers["content-type"] == "application/json", r.headers
    return str(json.loads(r.body)["error"]["code"])


async def test_the_snapshot_is_the_streams_newest_frame_as_a_jpeg(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, SETTINGS, ("demo",)) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        r = await get(srv.port, "/v1/streams/demo/snapshot.jpg")
        assert r.status == 200, r.body[:200]
        assert r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "no-store"
        assert r.body[:2] == b"\xff\xd8" and len(r.body) > 1000
        image = cv2.imdecode(np.frombuffer(r.body, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (HEIGHT, WIDTH, 3)
        # It is the demo scene at the stream time the response names (JPEG-close, in RGB order).
        pts = float(r.headers["x-livesight-stream-time"])
        expected = render(pts)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32)
        assert float(np.abs(rgb - expected.astype(np.float32)).mean()) < 6.0
        later = render(pts + 7.0).astype(np.float32)  # another moment of the scene is clearly further off
        assert float(np.abs(rgb - later).mean()) > float(np.abs(rgb - expected.astype(np.float32)).mean())
        assert float(r.headers["x-livesight-captured-at"]) > 0
        # Newer frames come as the stream runs.
        for _ in range(100):  # a newer frame within 10 s (2 fps)
            f = await srv.engine.latest_frame("demo")
            if f is not None and f.pts > pts:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no newer frame in 10 s")
        newer = await get(srv.port, "/v1/streams/demo/snapshot.jpg")
        assert newer.status == 200 and float(newer.headers["x-livesight-stream-time"]) > pts


async def test_one_encoding_per_frame_however_many_ask(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, SETTINGS, ("demo",)) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        snapshots = srv.app.snapshots
        frame = await srv.engine.latest_frame("demo")
        assert frame is not None
        before = snapshots.encoded
        # Twenty viewers at once for the same frame: one JPEG, shared (also while it is being made).
        got = await asyncio.gather(*(snapshots.jpeg("demo", frame, ["demo"]) for _ in range(20)))
        assert snapshots.encoded == before + 1
        assert len(set(got)) == 1 and got[0][:2] == b"\xff\xd8"
        # Over HTTP too: requests for a frame already made do not encode it again.
        await get(srv.port, "/v1/streams/demo/snapshot.jpg")
        made = snapshots.encoded
        for _ in range(3):
            r = await get(srv.port, "/v1/streams/demo/snapshot.jpg")
            assert r.status == 200
        newest = await srv.engine.latest_frame("demo")
        assert newest is not None
        # At most one more encoding per frame that arrived meanwhile (2 fps: a few at most).
        assert snapshots.encoded - made <= max(0, newest.index - frame.index)


async def test_the_token_and_the_viewers_streams_are_enforced(tiny: SmolVLMAdapter) -> None:
    viewer = Viewer("lobby", VIEWER, frozenset({"yard"}))
    async with running_server(tiny, SETTINGS, ("demo", "yard=demo"), viewers=[viewer]) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        await wait_for_frames(srv.engine, "yard", 1)
        no_token = await get(srv.port, "/v1/streams/demo/snapshot.jpg", token=None)
        assert no_token.status == 401 and error_code(no_token) == "unauthorized"
        assert no_token.headers["www-authenticate"].startswith("Bearer")
        wrong = await get(srv.port, "/v1/streams/demo/snapshot.jpg", token="not-the-token")
        assert wrong.status == 401 and error_code(wrong) == "unauthorized"
        # A viewer gets its own stream, and the others are unknown to it.
        own = await get(srv.port, "/v1/streams/yard/snapshot.jpg", token=VIEWER)
        assert own.status == 200 and own.headers["content-type"] == "image/jpeg"
        other = await get(srv.port, "/v1/streams/demo/snapshot.jpg", token=VIEWER)
        assert other.status == 404 and error_code(other) == "unknown_stream"
        assert b"\xff\xd8" not in other.body


@pytest.mark.parametrize("name", ["nowhere", "a b/../c"])
async def test_an_unknown_stream_is_a_typed_404(tiny: SmolVLMAdapter, name: str) -> None:
    async with running_server(tiny, SETTINGS, ("demo",)) as srv:
        r = await get(srv.port, f"/v1/streams/{quote(name, safe='')}/snapshot.jpg")
        assert r.status == 404 and error_code(r) == "unknown_stream", r.body
        assert r.headers["cache-control"] == "no-store"
        other = await get(srv.port, "/v1/streams/demo/picture.png")
        assert other.status == 404 and error_code(other) == "not_found"


async def test_a_stream_without_a_frame_yet_is_a_typed_404(tiny: SmolVLMAdapter) -> None:
    with socket.socket() as s:  # a camera address where nothing listens: never a frame
        s.bind(("127.0.0.1", 0))
        dead = f"rtsp://127.0.0.1:{s.getsockname()[1]}/cam"
    async with running_server(tiny, SETTINGS, (f"cam={dead}",)) as srv:
        r = await get(srv.port, "/v1/streams/cam/snapshot.jpg")
        assert r.status == 404 and error_code(r) == "no_video", r.body
        assert srv.app.snapshots.encoded == 0
