"""One port: ``GET /healthz``, the websocket API at ``/v1/ws``, the page at ``/``, Prometheus metrics at
``/metrics`` (:mod:`web.metrics`), the OpenAI-compatible API at ``/v1/models`` and ``/v1/chat/completions``
(:mod:`web.openai_http`), WHIP ingest at ``/v1/whip/<name>`` (:mod:`web.whip`), the timeline at
``/v1/events`` (:mod:`web.events_http`), and each stream's newest frame at
``/v1/streams/<name>/snapshot.jpg`` (:mod:`web.snapshots`). GET requests are answered in websockets'
``process_request`` (the timeline and the pictures asynchronously: their reads and encodings run in a
thread); other methods come through :mod:`web.plain_http`.

Every request's ``Host`` must name this server (:class:`HostCheck`), which stops DNS rebinding: a page on
a hostile name that resolves to this machine is refused even though its ``Origin`` matches its ``Host``.
Websocket connections and chat completions in progress are limited per client address and in total
(:mod:`web.slots`), refused with a reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Iterable
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from engine.api import EngineAPI
from errors import Unauthorized
from stream.policy import SourcePolicy
from web import openai_api
from web.auth import Authenticator
from web.connection import OUTBOX, OUTBOX_BYTES, ClientConnection
from web.events_http import EventsEndpoint, is_events_path
from web.metrics import METRICS_PATH, Metrics
from web.openai_http import OpenAIEndpoint, shape_error
from web.plain_http import HttpError, HttpRequest, HttpResponse, connection_class
from web.protocol import HARD_LIMIT_BYTES
from web.slots import Limits, Slots
from web.snapshots import StreamSnapshots, is_stream_path
from web.whip import WHIP_PATH, WhipEndpoint

log = logging.getLogger("livesight.web")

WS_PATH = "/v1/ws"
#: the page's scripts (web/static/*.js), served to anyone as the page is
_STATIC = re.compile(r"^/static/([a-z]{1,32}\.js)$")


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


def _from_plain(response: HttpResponse) -> Response:
    """A buffered :class:`HttpResponse` as websockets' response to a GET."""
    headers = Headers([*response.headers, ("Content-Length", str(len(response.body))), ("Cache-Control", "no-store")])
    return Response(response.status.value, response.status.phrase, headers, response.body)


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
        metrics_public: bool = False,
    ) -> None:
        self.auth = auth
        self.outbox = outbox
        self.outbox_bytes = outbox_bytes
        self.model_id = model_id
        self.hosts = hosts or HostCheck()
        self.limits = limits or Limits()
        self.policy = policy or SourcePolicy()
        self.engine: EngineAPI | None = None
        self.failure: str | None = None
        self.metrics_public = metrics_public
        self._server: Server | None = None
        self._clients: set[ClientConnection] = set()
        self._slots = Slots(self.limits)
        #: the engine's observer (serve passes it to the Engine) and the registry /metrics shows
        self.metrics = Metrics(model_id)
        self.metrics.bind(lambda: self.engine, lambda: len(self._clients), lambda: self.auth.limiter.total)
        self.openai = OpenAIEndpoint(auth, lambda: self.engine, self._slots)
        self._whip = WhipEndpoint(auth, lambda: self.engine, self.hosts)
        self._events = EventsEndpoint(auth, lambda: self.engine, time.time)
        #: each stream's newest frame as a JPEG, made once per frame
        self.snapshots = StreamSnapshots(auth, lambda: self.engine)

    # --- HTTP ------------------------------------------------------------------------------------
    def process_request(self, conn: ServerConnection, request: Request) -> Response | Awaitable[Response] | None:
        if not self.hosts.allows(request.headers.get("Host")):
            return json_response(HTTPStatus.MISDIRECTED_REQUEST, {"error": "this server does not answer to that Host"})
        path = urlsplit(request.path).path
        if path == "/healthz":
            return self._health(request.headers, _address(conn))
        if path == METRICS_PATH:
            return self._metrics(request.headers, _address(conn))
        if path == openai_api.MODELS_PATH or path.startswith(openai_api.MODELS_PATH + "/"):
            return _from_plain(self.openai.models(path, request.headers.get("Authorization"), _address(conn)))
        if is_events_path(path):
            return self._timeline(request, _address(conn))
        if is_stream_path(path):
            return self._stream_snapshot(request, _address(conn))
        if path == openai_api.CHAT_PATH:
            refusal = openai_api.ApiError(
                HTTPStatus.METHOD_NOT_ALLOWED, "ask with POST", "bad_request", headers=[("Allow", "POST")]
            )
            return json_response(refusal.status, refusal.body(), refusal.headers)
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
        if (script := _STATIC.match(path)) is not None:
            file = resources.files("web").joinpath("static", script.group(1))
            if file.is_file():
                return _response(HTTPStatus.OK, file.read_bytes(), "text/javascript; charset=utf-8")
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

    async def _timeline(self, request: Request, address: str) -> Response:
        return _from_plain(await self._events.get(request.path, request.headers.get("Authorization"), address))

    async def _stream_snapshot(self, request: Request, address: str) -> Response:
        return _from_plain(await self.snapshots.get(request.path, request.headers.get("Authorization"), address))

    def _refuse_over_limit(self, address: str) -> Response | None:
        refusal = self._slots.refusal(address)
        if refusal is None:
            return None
        return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": refusal[0]}, [("Retry-After", "5")])

    def _metrics(self, headers: Headers, address: str) -> Response:
        """The metrics: any valid token (a viewer's: its own streams only), or none with ``metrics_public``."""
        streams: frozenset[str] | None = None
        if not self.metrics_public:
            token = bearer(headers)
            challenge = [("WWW-Authenticate", 'Bearer realm="livesight"')]
            if token is None:
                return json_response(
                    HTTPStatus.UNAUTHORIZED, {"error": "send Authorization: Bearer <token>"}, challenge
                )
            try:
                streams = self.auth.authenticate(token, address).streams
            except Unauthorized as exc:
                return json_response(HTTPStatus.UNAUTHORIZED, {"error": exc.message}, challenge)
        body, content_type = self.metrics.exposition(headers.get("Accept"), streams)
        return _response(HTTPStatus.OK, body, content_type)

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
            body["watches"] = sum(1 for w in self.engine.watches() if who.sees(w.stream))
        if self.metrics.webhooks is not None and who.admin:
            body["webhooks"] = dataclasses.asdict(self.metrics.webhooks.stats())
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
        release = self._slots.take(address)
        try:
            await client.run()
        finally:
            self._clients.discard(client)
            release()

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
            create_connection=connection_class(self._plain, self._shape_error),
        )
        return self._server

    async def _plain(self, request: HttpRequest) -> HttpResponse:
        """Every non-GET request: chat completions, else WHIP (which answers unknown routes)."""
        if not self.hosts.allows(request.headers.get("Host")):
            raise HttpError(HTTPStatus.MISDIRECTED_REQUEST, "this server does not answer to that Host")
        if urlsplit(request.target).path == openai_api.CHAT_PATH:
            return await self.openai.chat(request)
        return await self._whip(request)

    @staticmethod
    def _shape_error(error: HttpError, target: str | None) -> HttpResponse:
        return shape_error(error, target) or error.response()

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
