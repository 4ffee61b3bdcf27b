"""A listening socket that speaks just enough RTSP to learn what FFmpeg sends: the request line and the
credentials. It answers a request without ``Authorization`` with ``401`` and a Basic challenge, and one
with credentials with ``404``, so FFmpeg gives up after one authenticated request.

Used to check that livesight reads a camera URL exactly as FFmpeg does: which host it connects to (this
socket or somewhere else) and which user and password it sends.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Seen:
    request_line: str
    credentials: bytes | None  # the decoded Basic credentials ("user:password"), None without any


class RtspProbe:
    """``with RtspProbe() as probe: ... probe.port ... probe.take()``."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)  # so the accept loop sees the stop flag
        self.port = int(self._sock.getsockname()[1])
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rtsp-probe", daemon=True)

    def __enter__(self) -> RtspProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def take(self) -> list[Seen]:
        """The requests seen since the last call."""
        with self._lock:
            seen, self._seen = self._seen, []
        return seen

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            # The client hanging up or going quiet (OSError) ends the exchange; its requests are recorded.
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                self._exchange(conn)

    def _exchange(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("utf-8", "replace").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                auth = headers.get("authorization", "")
                creds = base64.b64decode(auth.split()[-1]) if auth.lower().startswith("basic ") else None
                with self._lock:
                    self._seen.append(Seen(lines[0], creds))
                cseq = headers.get("cseq", "0")
                if creds is None:
                    reply = (
                        f'RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\nWWW-Authenticate: Basic realm="probe"\r\n\r\n'
                    )
                else:
                    reply = f"RTSP/1.0 404 Not Found\r\nCSeq: {cseq}\r\n\r\n"
                conn.sendall(reply.encode())
