"""Watches and events survive kill -9: a real server process (with the dark double) is killed between an
alert and the next one; after a restart on the same data directory the watch added at run time is back
(same id), is evaluated again, fires again, and both alerts are stored. Driven with the command line
(``livesight watch``, ``watches``, ``events``) as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.test_cli import LIVESIGHT, Lines, free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "restart-test-token"


@contextmanager
def dark_server(port: int, data: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The dark-double server on ``port`` with its data in ``data``, healthy. The caller ends it."""
    args = ["--port", str(port), "--fast", "--fps", "1", "--data", str(data)]
    with log.open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.dark_server", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "LIVESIGHT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)},
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # still loading the model
                pass
            assert time.monotonic() < deadline, "server never became healthy"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def events(port: int) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events?stream=demo&kind=alert&limit=500",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return list(json.loads(r.read())["events"])


def wait(pred: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LIVESIGHT, *args, "--url", f"ws://127.0.0.1:{port}/v1/ws"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LIVESIGHT_TOKEN": TOKEN},
    )


def test_a_watch_and_its_events_survive_kill_9(tmp_path: Path) -> None:
    port, data, log = free_port(), tmp_path / "data", tmp_path / "serve.log"
    with dark_server(port, data, log) as first:
        options = ["--every", "2", "--cooldown", "10", "--keep", "--json", "--url", f"ws://127.0.0.1:{port}/v1/ws"]
        watcher = subprocess.Popen(
            [LIVESIGHT, "watch", "--stream", "demo", "the lights are off", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LIVESIGHT_TOKEN": TOKEN},
        )
        try:
            assert watcher.stdout is not None and watcher.stderr is not None
            started = Lines(watcher.stderr).expect(lambda s: s.startswith("watching demo"), 60, "watching")
            watch_id = int(started.rsplit("watch ", 1)[1].rstrip(")"))
            alert = json.loads(Lines(watcher.stdout).expect(lambda s: '"type":"alert"' in s, 60, "an alert"))
            assert alert["watch"] == watch_id and alert["condition"] == "the lights are off"
            stored = wait(lambda: [e for e in events(port) if e["id"] >= alert["event"]], 30, "the alert stored")
        finally:
            watcher.send_signal(signal.SIGINT)
            watcher.wait(30)
        first.send_signal(signal.SIGKILL)  # no shutdown, no flush: whatever was committed is all there is
        first.wait(30)
    last_before = max(e["id"] for e in stored)

    with dark_server(port, data, log) as second:
        listed = cli(port, "watches", "--json")
        assert listed.returncode == 0, listed.stderr
        (w,) = json.loads(listed.stdout)
        assert w["id"] == watch_id and w["condition"] == "the lights are off" and w["origin"] == "api"
        after = wait(lambda: [e for e in events(port) if e["id"] > last_before], 60, "an alert after the restart")
        assert after[-1]["watch"] == watch_id
        again = json.loads(cli(port, "watches", "--json").stdout)[0]
        assert again["evaluations"] > 0
        shown = cli(port, "events", "--stream", "demo", "--since", "1h", "--text", "lights")
        assert shown.returncode == 0, shown.stderr
        lines = [ln for ln in shown.stdout.splitlines() if " ALERT demo " in ln]
        assert len(lines) >= 2 and all("/v1/events/" in ln for ln in lines)
        assert f"[event {last_before}]" in shown.stdout and f"[event {after[-1]['id']}]" in shown.stdout
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
