"""Runs tests/support/rtsp_server.py (GStreamer's RTSP server) as a subprocess on a free loopback port.

The server needs Debian's python3 with gi (installed by scripts/setup from scripts/system-packages.txt).
Kill it and start it again on the same port to play a camera that reboots; SIGSTOP it to play one
that freezes with its connections open.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """One camera: ``url`` (with credentials if ``user`` is given), ``start``/``kill``/``freeze``/``thaw``."""

    def __init__(self, *, user: str | None = None, password: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.user = user
        self.password = password
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        cred = f"{self.user}:{self.password}@" if self.user is not None else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), *self.extra]
        if self.user is not None:
            args += ["--user", self.user, "--password", self.password or ""]
        deadline = time.monotonic() + timeout
        while True:  # the port may still be held for a moment after a kill
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                return
            self.proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start: {line}{self.proc.stdout.read()}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
        self.kill()
