"""The command line, run as a user runs it: real processes, a real port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from errors import ConfigError
from livesight.config import load_serve_config

LIVESIGHT = str(Path(sys.executable).parent / "livesight")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LIVESIGHT, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["ask", "--help"]])
def test_help(args: list[str]) -> None:
    res = run(*args)
    assert res.returncode == 0 and "usage: livesight" in res.stdout


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    port, token = free_port(), "cli-test-token"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [LIVESIGHT, "serve", "--model", "tiny-random", "--port", str(port), "--fps", "4", "--metrics-public"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LIVESIGHT_TOKEN": token},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "server never became healthy"
            time.sleep(0.2)
        yield port, token
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
        log.close()


def wait_for_frames(url: str, token: str, frames: int, within: float = 60.0) -> None:
    """Poll ``streams`` over the websocket until the first stream has ``frames`` frames in memory."""
    deadline = time.monotonic() + within
    with connect(url) as ws:
        ws.send(json.dumps({"type": "auth", "token": token}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        while True:
            ws.send(json.dumps({"type": "streams"}))
            (stream,) = json.loads(ws.recv(timeout=10))["streams"]
            if stream["frames"] >= frames:
                return
            assert time.monotonic() < deadline, stream
            time.sleep(0.1)


def test_serve_tiny_random_answers_ask_with_streamed_tokens(server: tuple[int, str]) -> None:
    port, token = server
    url = f"ws://127.0.0.1:{port}/v1/ws"
    wait_for_frames(url, token, 2)
    res = run(
        "ask",
        "--url",
        url,
        "--stream",
        "demo",
        "--json",
        "--max-new-tokens",
        "16",
        "What do you see?",
        env={"LIVESIGHT_TOKEN": token},
    )
    assert res.returncode == 0, res.stderr
    msgs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [m["type"] for m in msgs][-1] == "answer" and msgs[0]["type"] == "token"
    assert msgs[-1]["context"]["frames"] > 0
    # the human form prints the answer text, then the context line on stderr
    res = run("ask", "--url", url, "--token", token, "--stream", "demo", "Again?", "--max-new-tokens", "8")
    assert res.returncode == 0 and "frames" in res.stderr and "first token" in res.stderr
    # a wrong token is refused
    res = run("ask", "--url", url, "--token", "wrong-token", "--stream", "demo", "x")
    assert res.returncode == 2 and "unauthorized" in res.stderr
    # --metrics-public: /metrics without a token, fed by the engine serve started
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'livesight_questions_total{code="",outcome="answered"} 2.0' in metrics
    assert 'livesight_stream_ingest_lag_seconds_count{stream="demo"}' in metrics


def test_a_model_that_is_neither_cached_nor_reachable_fails_fast_and_says_what_to_do(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{closed}",
        "HF_HUB_OFFLINE": "0",
        "LIVESIGHT_TOKEN": "offline-test-token",
    }
    start = time.monotonic()
    res = run("serve", "--model", "someone/some-vlm", "--port", str(free_port()), env=env, timeout=60)
    assert time.monotonic() - start < 60
    assert res.returncode == 1  # retryable: it may work once the hub is reachable
    err = res.stderr
    assert "someone/some-vlm" in err and str(tmp_path / "hf") in err and "--model tiny-random" in err


def test_bad_configuration_is_refused_at_startup() -> None:
    res = run(
        "serve",
        "--model",
        "tiny-random",
        "--fps",
        "0",
        "--source",
        "cam=/no/such/file.mp4",
        env={"LIVESIGHT_TOKEN": "good-token-123"},
    )
    assert res.returncode == 2 and "livesight: error:" in res.stderr and "no such file" in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fps": 0}, "fps: Input should be greater than 0"),
        ({"sources": ["demo", "demo"]}, "unique"),
        ({"token": "short"}, "token: String should have at least 8 characters"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"port": 70000, "budget": 3}, "port"),
    ],
)
def test_config_validation_names_every_problem(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_serve_config({"token": "good-token-123", **values})
