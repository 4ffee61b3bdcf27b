"""``livesight serve`` as its own process, as a user starts it: for tests that kill it, restart it, or load a
model the way the command line does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from livesight.client import SyncClient

TOKEN = "process-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    data: Path, log: Path, *extra: str, model: str = "tiny-random"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``livesight serve`` on the demo scene with its archive in ``data``; killed at the end if still up."""
    port = free_port()
    out = log.open("a")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livesight.cli",
            "serve",
            "--model",
            model,
            "--port",
            str(port),
            "--data",
            str(data),
            "--log-level",
            "debug",
            *extra,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LIVESIGHT_TOKEN": TOKEN},
    )
    url = f"ws://127.0.0.1:{port}/v1/ws"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with SyncClient(url, TOKEN, reconnect=False) as c:
                    c.streams()
                break
            except Exception:  # not listening yet, or still loading the model (503)
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.close()
