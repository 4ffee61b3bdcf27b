"""One port: ``GET /healthz``, the websocket API at ``/v1/ws``, the page at ``/``, and WHIP ingest at
``/v1/whip/<name>`` (non-GET requests, answered by :mod:`web.whip` through :mod:`web.plain_http`).

Every request's ``Host`` must name this server (:class:`HostCheck`), which stops DNS rebinding: a page on
a hostile name that resolves to this machine is refused even though its ``Origin`` matches its ``Host``.
Websocket connections are limited per client address and in total, refused with 503 and a reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from engine.engine import Engine
from errors import Unauthorized
from stream.policy import SourcePolicy
from web.auth import Authenticator
from web.connection import OUTBOX, OUTBOX_BYTES, ClientConnection
from web.plain_http import connection_class
from web.protocol import HARD_LIMIT_BYTES
from web.whip import WHIP_PATH, WhipEndpoint

log = logging.getLogger("livesight.web")

WS_PATH = "/v1/ws"


@dataclass(frozen=True, slots=True)
class Limits:
    """Websocket connections allowed at once, per client address and in all."""

    per_address: int = 16
    total: int = 256


class HostCheck:
    """Which ``Host`` headers name this server: IP literals (an attacker cannot make a browser send
    another machine's address as Host for its own page), ``localhost``, and the configured ``names``."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names = {n.lower().rstrip(".") for n in names} | {"localhost"}

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        name = urlsplit(f"//{host}").hostname
        if name is None:
            return False
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name.lower().rstrip(".") in self.names


def _response(status: HTTPStatus, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"), *extra]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, data: dict[str, Any], extra: Iterable[tuple[str, str]] = ()) -> Response:
    return _response(status, json.dumps(data).encode(), "application/json", extra)


def bearer(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class App:
    """The server's state as HTTP sees it: starting until the engine is set, then ready."""

    def __init__(
        self,
        auth: Authenticator,
        model_id: str,
        *,
        outbox: int = OUTBOX,
        outbox_bytes: int = OUTBOX_BYTES,
        hosts: HostCheck | None = None,
        limits: Limits | None = None,
        policy: SourcePolicy | None = None,
    ) -> None:
        self.auth = auth
        self.outbox = outbox
        self.outbox_bytes = outbox_bytes
        self.model_id = model_id
        self.hosts = hosts or HostCheck()
        self.limits = limits or Limits()
        self.policy = policy or SourcePolicy()
        self.engine: Engine | None = None
        self.failure: str | None = None
        self._server: Server | None = None
        self._clients: set[ClientConnection] = set()
        self._per_address: Counter[str] = Counter()

    # --- HTTP ------------------------------------------------------------------------------------
    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if not self.hosts.allows(request.headers.get("Host")):
            return json_response(HTTPStatus.MISDIRECTED_REQUEST, {"error": "this server does not answer to that Host"})
        path = urlsplit(request.path).path
        if path == "/healthz":
            return self._health(request.headers, _address(conn))
        if path == WS_PATH:
            origin = request.headers.get("Origin")
            host = request.headers.get("Host")
            # Browsers send Origin: refuse pages from other sites (cross-site websocket hijacking).
            if origin is not None and urlsplit(origin).netloc != host:
                return json_response(HTTPStatus.FORBIDDEN, {"error": "cross-origin websocket refused"})
            if self.engine is None:
                return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "starting"}, [("Retry-After", "5")])
            return self._refuse_over_limit(_address(conn))
        if path.startswith(WHIP_PATH):
            return json_response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "publish with POST (WHIP)"})
        if path in ("/", "/index.html"):
            page = resources.files("web").joinpath("static/index.html").read_bytes()
            return _response(HTTPStatus.OK, page, "text/html; charset=utf-8")
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

    def _refuse_over_limit(self, address: str) -> Response | None:
        if self._per_address[address] >= self.limits.per_address:
            why = f"too many connections from your address (at most {self.limits.per_address})"
        elif len(self._clients) >= self.limits.total:
            why = f"too many connections (at most {self.limits.total})"
        else:
            return None
        return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": why}, [("Retry-After", "5")])

    def _health(self, headers: Headers, address: str) -> Response:
        """Liveness for anyone; the model, streams and queue only for a valid bearer token."""
        status, code = "ok", HTTPStatus.OK
        if self.failure is not None:
            status, code = "failed", HTTPStatus.SERVICE_UNAVAILABLE
        elif self.engine is None:
            status, code = "starting", HTTPStatus.SERVICE_UNAVAILABLE
        body: dict[str, Any] = {"status": status}
        token = bearer(headers)
        if token is None:
            return json_response(code, body)
        try:
            who = self.auth.authenticate(token, address)
        except Unauthorized as exc:
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": exc.message}, [("WWW-Authenticate", "Bearer")])
        body["model"] = self.model_id
        if self.failure is not None:
            body["error"] = self.failure
        if self.engine is not None:
            body["streams"] = [
                {"name": s.name, "state": s.state} for s in self.engine.streams_info() if who.sees(s.name)
            ]
            body["queued"] = self.engine.queued
        return json_response(code, body)

    # --- websocket -------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        engine = self.engine
        if engine is None:  # process_request already refused it; defensive for races at shutdown
            await ws.close(1013, "starting")
            return
        address = _address(ws)
        if self._refuse_over_limit(address) is not None:  # handshakes that raced past process_request
            await ws.close(1013, "too many connections")
            return
        client = ClientConnection(
            ws, engine, self.auth, policy=self.policy, outbox=self.outbox, outbox_bytes=self.outbox_bytes
        )
        self._clients.add(client)
        self._per_address[address] += 1
        try:
            await client.run()
        finally:
            self._clients.discard(client)
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    @property
    def connections(self) -> int:
        return len(self._clients)

    async def listen(self, host: str, port: int) -> Server:
        self._server = await serve(
            self.handle,
            host,
            port,
            process_request=self.process_request,
            max_size=HARD_LIMIT_BYTES,
            # No permessage-deflate: compressed replies would hide a client that stops reading behind
            # kernel buffers (80,000 unread answers never filled its outbox), and answers are small.
            compression=None,
            server_header="livesight",
            close_timeout=3,
            create_connection=connection_class(WhipEndpoint(self.auth, lambda: self.engine, self.hosts)),
        )
        return self._server

    async def drain(self, timeout: float = 2.0) -> None:
        """Let every client's queued messages go out (at most ``timeout`` seconds), before a shutdown."""
        await asyncio.gather(*(c.flush(timeout) for c in list(self._clients)))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 10)
            except asyncio.TimeoutError:
                log.warning("some connections did not close within 10 s; leaving them")

    def sockets(self) -> list[socket.socket]:
        return [] if self._server is None else list(self._server.sockets)

    def port(self) -> int:
        return int(self.sockets()[0].getsockname()[1])


def _address(conn: ServerConnection) -> str:
    return str(conn.remote_address[0]) if conn.remote_address else "unknown"
