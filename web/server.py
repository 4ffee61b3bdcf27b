"""One port: ``GET /healthz``, the websocket API at ``/v1/ws``, the page at ``/``, and WHIP ingest at
``/v1/whip/<name>`` (non-GET requests, answered by :mod:`web.whip` through :mod:`web.plain_http`)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from engine.engine import Engine
from web.connection import OUTBOX, ClientConnection
from web.plain_http import connection_class
from web.protocol import HARD_LIMIT_BYTES
from web.whip import WHIP_PATH, WhipEndpoint

log = logging.getLogger("livesight.web")

WS_PATH = "/v1/ws"


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, data: dict[str, Any]) -> Response:
    return _response(status, json.dumps(data).encode(), "application/json")


class App:
    """The server's state as HTTP sees it: starting until the engine is set, then ready."""

    def __init__(self, token: str, model_id: str, *, outbox: int = OUTBOX) -> None:
        self.token = token
        self.outbox = outbox
        self.model_id = model_id
        self.engine: Engine | None = None
        self.failure: str | None = None
        self._server: Server | None = None

    # --- HTTP ------------------------------------------------------------------------------------
    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return self._health()
        if path == WS_PATH:
            origin = request.headers.get("Origin")
            host = request.headers.get("Host")
            # Browsers send Origin: refuse pages from other sites (cross-site websocket hijacking).
            if origin is not None and urlsplit(origin).netloc != host:
                return json_response(HTTPStatus.FORBIDDEN, {"error": "cross-origin websocket refused"})
            if self.engine is None:
                return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "starting"})
            return None
        if path.startswith(WHIP_PATH):
            return json_response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "publish with POST (WHIP)"})
        if path in ("/", "/index.html"):
            page = resources.files("web").joinpath("static/index.html").read_bytes()
            return _response(HTTPStatus.OK, page, "text/html; charset=utf-8")
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

    def _health(self) -> Response:
        if self.failure is not None:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "failed", "error": self.failure})
        if self.engine is None:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "starting", "model": self.model_id})
        return json_response(
            HTTPStatus.OK,
            {
                "status": "ok",
                "model": self.model_id,
                "streams": [{"name": s.name, "state": s.state} for s in self.engine.streams_info()],
                "queued": self.engine.queued,
            },
        )

    # --- websocket -------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        engine = self.engine
        if engine is None:  # process_request already refused it; defensive for races at shutdown
            await ws.close(1013, "starting")
            return
        await ClientConnection(ws, engine, self.token, outbox=self.outbox).run()

    async def listen(self, host: str, port: int) -> Server:
        self._server = await serve(
            self.handle,
            host,
            port,
            process_request=self.process_request,
            max_size=HARD_LIMIT_BYTES,
            server_header="livesight",
            close_timeout=3,
            create_connection=connection_class(WhipEndpoint(self.token, lambda: self.engine)),
        )
        return self._server

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
