"""The command line, run as a user runs it: real processes, a real port."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        *(
            [cmd, "--help"]
            for cmd in ("serve", "ask", "streams", "add", "remove", "status", "watch", "unwatch", "watches", "events")
        ),
    ],
)
def test_help(args: list[str]) -> None:
    res = run(*args)
    assert res.returncode == 0 and "usage: livesight" in res.stdout


@contextmanager
def serving(port: int, token: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``livesight serve --model tiny-random`` on ``port``, healthy; stopped (and checked) afterwards."""
    with log.open("a") as out:
        proc = subprocess.Popen(
            [LIVESIGHT, "serve", "--model", "tiny-random", "--port", str(port), "--fps", "4", "--metrics-public"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LIVESIGHT_TOKEN": token},
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:  # not listening yet, or slow under load (URLError, timeouts)
                    pass
                assert time.monotonic() < deadline, "server never became healthy"
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    port, token = free_port(), "cli-test-token"
    with serving(port, token, tmp_path / "serve.log"):
        yield port, token


class Lines:
    """A text stream read line by line in a thread, so a test can wait for a line with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))

    def expect(self, pred: Callable[[str], bool], within: float, what: str) -> str:
        """The first line (not read before) that matches ``pred``, waiting at most ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line {what} within {within} s; seen: {self.seen}") from None
            self.seen.append(line)
            if pred(line):
                return line


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


def test_client_commands_list_add_show_follow_and_remove_streams(server: tuple[int, str]) -> None:
    port, token = server
    url = f"ws://127.0.0.1:{port}/v1/ws"
    env = {"LIVESIGHT_TOKEN": token}
    wait_for_frames(url, token, 1)

    res = run("streams", "--url", url, env=env)
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "SOURCE"] and row.split()[:3] == ["demo", "live", "demo"]
    res = run("streams", "--url", url, "--json", env=env)
    (info,) = json.loads(res.stdout)
    assert info["name"] == "demo" and info["frames"] >= 1 and info["memory_tokens"] > 0

    res = run("add", "cam2", "demo", "--url", url, env=env)
    assert res.returncode == 0 and res.stdout == "added cam2: demo\n", res.stderr
    res = run("status", "cam2", "--url", url, env=env)
    assert res.returncode == 0 and res.stdout.split()[1:3] in (["cam2", "starting"], ["cam2", "live"]), res.stdout

    follow = subprocess.Popen(
        [LIVESIGHT, "status", "--follow", "--json", "cam2", "demo", "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert follow.stdout is not None
        lines = Lines(follow.stdout)
        first = {json.loads(lines.expect(bool, 30, "at all"))["stream"]}
        first.add(json.loads(lines.expect(bool, 30, "for the second stream"))["stream"])
        assert first == {"cam2", "demo"}
        res = run("remove", "cam2", "--url", url, env=env)
        assert res.returncode == 0 and res.stdout == "removed cam2\n", res.stderr
        gone = lines.expect(lambda line: json.loads(line)["state"] == "removed", 30, "saying cam2 was removed")
        assert json.loads(gone) == {"type": "status", "stream": "cam2", "state": "removed"}
        assert follow.poll() is None  # still following demo
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=30) == 130
    finally:
        follow.kill()
        follow.wait()

    # Exit codes: 2 for what retrying cannot fix, 1 for what it can.
    res = run("remove", "cam2", "--url", url, env=env)
    assert res.returncode == 2 and "unknown_stream" in res.stderr, res.stderr
    res = run("streams", "--url", url, "--token", "wrong-token")
    assert res.returncode == 2 and "unauthorized" in res.stderr
    res = run("status", "--url", f"ws://127.0.0.1:{free_port()}/v1/ws", env=env)
    assert res.returncode == 1 and "connection_failed" in res.stderr
    res = run("streams", "--url", url, env={"LIVESIGHT_TOKEN": ""})
    assert res.returncode == 2 and "no token" in res.stderr


def test_status_follow_comes_back_after_a_server_restart(tmp_path: Path) -> None:
    port, token = free_port(), "cli-restart-token"
    url = f"ws://127.0.0.1:{port}/v1/ws"
    follow: subprocess.Popen[str] | None = None
    try:
        with serving(port, token, tmp_path / "first.log"):
            follow = subprocess.Popen(
                [LIVESIGHT, "status", "--follow", "--url", url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "LIVESIGHT_TOKEN": token},
            )
            assert follow.stdout is not None and follow.stderr is not None
            out, err = Lines(follow.stdout), Lines(follow.stderr)
            assert out.expect(bool, 30, "at all").split()[1] == "demo"
        err.expect(lambda line: "connection lost" in line and "reconnecting" in line, 30, "saying it reconnects")
        with serving(port, token, tmp_path / "second.log"):
            err.expect(lambda line: line == "livesight: reconnected", 60, "saying it reconnected")
            line = out.expect(lambda line: line.split()[1] == "demo", 30, "about demo after the restart")
            assert line.split()[2] in ("starting", "live")
            assert follow.poll() is None
            follow.send_signal(signal.SIGINT)
            assert follow.wait(timeout=30) == 130
    finally:
        if follow is not None:
            follow.kill()
            follow.wait()


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
