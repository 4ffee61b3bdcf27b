"""Streams come and go: a settable cap, ended streams freed after a while (subscribers told), a question
about a stream with no video yet refused with a typed error, and a shutdown that tells every asker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from engine.engine import Engine, EngineSettings
from errors import Busy
from livesight.config import load_serve_config
from models.families.smolvlm import SmolVLMAdapter
from stream.policy import SourcePolicy
from stream.spec import parse_source
from tests.media import write_video
from tests.support.server import TOKEN, client, running_server, source_factory


async def test_the_stream_cap_is_a_setting(tiny: SmolVLMAdapter) -> None:
    engine = Engine(tiny, EngineSettings(max_streams=2), source_factory())
    await engine.start([parse_source("a=demo"), parse_source("b=demo")])
    try:
        with pytest.raises(Busy, match="at most 2 streams"):
            engine.add_stream(parse_source("c=demo"))
        await engine.remove_stream("a")
        engine.add_stream(parse_source("c=demo"))
    finally:
        await engine.close()
    assert load_serve_config({"token": TOKEN, "max_streams": 64}).max_streams == 64


async def test_an_ended_stream_is_freed_after_its_time_and_subscribers_hear_it(
    tiny: SmolVLMAdapter, tmp_path: Path
) -> None:
    clip = write_video(tmp_path / "clip.mp4", seconds=2, fps=5, size=(64, 48))
    settings = EngineSettings(fps=2.0, ended_ttl_s=1.0)
    policy = SourcePolicy(allow_files=[str(tmp_path)])
    async with (
        running_server(tiny, settings, (f"clip={clip}",), lossless=True, policy=policy) as srv,
        client(srv.url) as c,
    ):
        await c.send({"type": "subscribe", "stream": "clip"})
        states = [m["state"] for m in await c.until(lambda m: m.get("state") == "removed", timeout=30)]
        assert "ended" in states and states[-1] == "removed"
        assert srv.engine.stream_names() == []
        # The name is free again.
        await c.send({"type": "add_stream", "name": "clip", "url": str(clip)})
        assert (await c.next(lambda m: m["type"] in ("stream_added", "error")))["type"] == "stream_added"


async def test_a_question_about_a_stream_without_video_is_a_typed_error(tiny: SmolVLMAdapter) -> None:
    with socket.socket() as s:  # a camera address where nothing listens: never a frame
        s.bind(("127.0.0.1", 0))
        dead = f"rtsp://127.0.0.1:{s.getsockname()[1]}/cam"
    async with running_server(tiny, EngineSettings(fps=1.0), (f"cam={dead}",)) as srv, client(srv.url) as c:
        await c.send({"type": "ask", "id": "q", "stream": "cam", "question": "Anyone there?"})
        err = await c.next(lambda m: m["type"] in ("error", "answer"))
        assert (err["type"], err["id"], err["code"], err["retryable"]) == ("error", "q", "no_video", True)
        assert "no video" in err["message"]


def test_sigterm_tells_every_waiting_and_running_question_before_closing(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LIVESIGHT_TOKEN": TOKEN}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "livesight.cli", "serve", "--model", "tiny-random", "--port", str(port), "--fps", "4"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )

    async def scenario() -> list[dict[str, object]]:
        url = f"ws://127.0.0.1:{port}/v1/ws"
        deadline = time.monotonic() + 60
        while True:  # until the server is up and the demo has a frame
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                async with client(url) as c:
                    await c.send({"type": "streams"})
                    if (await c.recv())["streams"][0]["frames"] >= 1:
                        break
            except (OSError, InvalidStatus):  # not listening yet, or 503 while the model loads
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            await asyncio.sleep(0.2)
        got: list[dict[str, object]] = []
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
            await ws.recv()
            for qid in ("running", "waiting"):
                q = {"type": "ask", "id": qid, "stream": "demo", "question": "Tell me all.", "max_new_tokens": 1024}
                await ws.send(json.dumps(q))
            while True:  # the first answer is under way
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg["type"] == "token":
                    break
            proc.send_signal(signal.SIGTERM)
            async for raw in ws:  # until the server closes the connection
                msg = json.loads(raw)
                if msg["type"] != "token":
                    got.append(msg)
        return got

    try:
        finals = asyncio.run(scenario())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert {m["id"] for m in finals} == {"running", "waiting"}, finals
    for m in finals:
        assert (m["type"], m["code"], m["retryable"]) == ("error", "unavailable", True), m
        assert "shutting down" in str(m["message"])
