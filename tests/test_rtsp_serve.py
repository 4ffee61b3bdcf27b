"""``livesight serve --config`` as a user runs it: a real process, a camera with credentials from the
streams file, its status over /healthz and the websocket, and its whole log checked for the secrets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.support.rtsp import RtspServer, free_port

TOKEN = "serve-token-123"
PASSWORD = "S3cret-Pass-9"


@pytest.fixture
def camera() -> Iterator[RtspServer]:
    server = RtspServer(user="operator", password=PASSWORD)
    server.start()
    yield server
    server.close()


def health(port: int) -> dict[str, Any]:
    """The detailed health (streams and their states): it needs the token."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as exc:  # 503 while starting: the body still says why
        return dict(json.load(exc))
    except OSError:
        return {"status": "unreachable"}


def wait_health(port: int, what: str, ok: Callable[[dict[str, Any]], bool], within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        h = health(port)
        if ok(h):
            return h
        assert time.monotonic() < deadline, f"{what}: not within {within} s; /healthz: {h}"
        time.sleep(0.2)


def door_state(h: dict[str, Any]) -> str | None:
    return next((s["state"] for s in h.get("streams", []) if s["name"] == "door"), None)


def test_serve_with_a_streams_file_reports_the_camera_and_never_its_credentials(
    tmp_path: Path, camera: RtspServer
) -> None:
    config = tmp_path / "cameras.toml"
    config.write_text(f'[[streams]]\nname = "door"\nurl = "{camera.url}"\nfps = 2\n')
    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    argv = ["serve", "--config", str(config), "--model", "tiny-random", "--port", str(port)]
    argv += ["--token-file", str(token_file)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "livesight.cli", *argv, "--log-level", "debug"], stdout=log, stderr=log
    )
    try:
        wait_health(port, "live", lambda h: door_state(h) == "live", within=60)
        with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            ws.send(json.dumps({"type": "auth", "token": TOKEN}))
            assert json.loads(ws.recv(timeout=10))["streams"] == ["door"]
            deadline = time.monotonic() + 15
            while True:
                ws.send(json.dumps({"type": "streams"}))
                raw = str(ws.recv(timeout=10))
                status = json.loads(raw)["streams"][0]
                if status["memory_frames"] > 0:
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
        assert status["source"] == f"rtsp://***@127.0.0.1:{camera.port}/cam"
        assert status["fps"] == 2.0
        camera.kill()
        down = wait_health(port, "leaves live", lambda h: door_state(h) != "live", within=10)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    text = log.read()
    assert "stream door: rtsp://***@127.0.0.1" in text  # the log does name the camera, redacted
    for shown in (text, raw, json.dumps(down)):
        assert PASSWORD not in shown
        assert "operator" not in shown
