"""WHIP (RFC 9725) ingest: ``POST /v1/whip/<name>`` publishes a WebRTC stream, ``DELETE`` on the returned
``Location`` ends it.

The publisher sends its SDP offer (``Content-Type: application/sdp``, every ICE candidate included: no
trickle ICE) with ``Authorization: Bearer <token>``; the answer comes back with ``201 Created`` and the
session's URL in ``Location``. Browsers (the page at ``/``), OBS, ffmpeg and GStreamer's whipsink speak it.
Publishing to the name of a WebRTC stream that has ended replaces it (a publisher reconnecting); any
other stream of that name is ``409 Conflict``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from engine.api import EngineAPI
from errors import BadRequest, Busy, ConfigError, Conflict, ShuttingDown, Unauthorized, UnknownStream
from stream.source import SourceState
from stream.spec import SourceSpec, check_name
from stream.webrtc import WebRTCSource
from web.auth import Authenticator
from web.plain_http import HttpError, HttpRequest, HttpResponse

if TYPE_CHECKING:
    from web.server import HostCheck

log = logging.getLogger("livesight.web")

WHIP_PATH = "/v1/whip/"
_GET_ONLY = ("/", "/index.html", "/healthz", "/v1/ws", "/metrics", "/v1/models")


class WhipEndpoint:
    """Answers every non-GET request on the server's port (see :mod:`web.plain_http`)."""

    def __init__(self, auth: Authenticator, engine: Callable[[], EngineAPI | None], hosts: HostCheck) -> None:
        self._auth = auth
        self._engine = engine
        self._hosts = hosts

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        if not self._hosts.allows(req.headers.get("Host")):
            raise HttpError(HTTPStatus.MISDIRECTED_REQUEST, "this server does not answer to that Host")
        path = urlsplit(req.target).path
        if path in _GET_ONLY:
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} answers GET only", [("Allow", "GET")])
        if not path.startswith(WHIP_PATH):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no route {path}")
        parts = [unquote(p) for p in path[len(WHIP_PATH) :].split("/")]
        if len(parts) == 1 and parts[0]:
            return await self._endpoint(req, parts[0])
        if len(parts) == 2 and all(parts):
            return await self._session(req, parts[0], parts[1])
        raise HttpError(HTTPStatus.NOT_FOUND, f"no route {path}")

    # --- POST /v1/whip/<name> --------------------------------------------------------------------
    async def _endpoint(self, req: HttpRequest, name: str) -> HttpResponse:
        if req.method == "OPTIONS":
            return HttpResponse(HTTPStatus.NO_CONTENT, headers=[("Allow", "POST, OPTIONS")])
        if req.method != "POST":
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "publish with POST", [("Allow", "POST, OPTIONS")])
        engine = self._authorize(req)
        try:
            check_name(name)
        except ConfigError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, exc.message) from None
        content_type = req.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the SDP offer as Content-Type: application/sdp")
        try:
            offer = req.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the SDP offer is not UTF-8") from None
        await self._free_name(engine, name)

        source = WebRTCSource(name, engine.settings.fps)
        try:
            answer = await source.accept(offer)
            engine.add_source(SourceSpec(name, "webrtc", "webrtc"), source)
        except BadRequest as exc:
            await source.close()
            # add_source refuses a name taken meanwhile (another publisher won the race) as a Conflict.
            conflict = isinstance(exc, Conflict)
            raise HttpError(HTTPStatus.CONFLICT if conflict else HTTPStatus.BAD_REQUEST, exc.message) from None
        except (Busy, ShuttingDown) as exc:
            await source.close()
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, exc.message, [("Retry-After", "5")]) from None
        except BaseException:
            await source.close()
            raise
        log.info("whip: %s is publishing", name)
        location = f"{WHIP_PATH}{name}/{source.session}"
        return HttpResponse(
            HTTPStatus.CREATED, answer.encode(), [("Content-Type", "application/sdp"), ("Location", location)]
        )

    async def _free_name(self, engine: EngineAPI, name: str) -> None:
        existing = engine.source(name)
        if existing is None:
            return
        if isinstance(existing, WebRTCSource) and existing.stats.state in (SourceState.ENDED, SourceState.OFFLINE):
            await engine.remove_stream(name)
            return
        raise HttpError(HTTPStatus.CONFLICT, f"a stream named {name!r} is in use")

    # --- DELETE /v1/whip/<name>/<session> --------------------------------------------------------
    async def _session(self, req: HttpRequest, name: str, session: str) -> HttpResponse:
        if req.method != "DELETE":
            # PATCH (trickle ICE, ICE restarts) is not supported: offers carry all their candidates.
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "end the session with DELETE", [("Allow", "DELETE")])
        engine = self._authorize(req)
        source = engine.source(name)
        if not isinstance(source, WebRTCSource) or not hmac.compare_digest(source.session.encode(), session.encode()):
            raise HttpError(HTTPStatus.NOT_FOUND, "no such WHIP session")
        try:
            await engine.remove_stream(name)
        except UnknownStream:  # removed meanwhile (a websocket remove_stream, say)
            raise HttpError(HTTPStatus.NOT_FOUND, "no such WHIP session") from None
        log.info("whip: %s stopped publishing", name)
        return HttpResponse(HTTPStatus.OK)

    def _authorize(self, req: HttpRequest) -> EngineAPI:
        """The engine, for an admin's request (publishing adds a stream); 401, 403 or 503 otherwise."""
        scheme, _, token = req.headers.get("Authorization", "").partition(" ")
        challenge = [("WWW-Authenticate", 'Bearer realm="livesight"')]
        address = req.peer or "unknown"
        try:
            if scheme.lower() != "bearer" or not token.strip():
                self._auth.refuse(address, "no bearer token")
                raise Unauthorized("send Authorization: Bearer <token>")
            who = self._auth.authenticate(token.strip(), address)
        except Unauthorized as exc:
            extra = [("Retry-After", "60")] if exc.retryable else []
            raise HttpError(HTTPStatus.UNAUTHORIZED, exc.message, challenge + extra) from None
        if not who.admin:
            raise HttpError(HTTPStatus.FORBIDDEN, "only the admin token may publish or end streams")
        engine = self._engine()
        if engine is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "starting", [("Retry-After", "5")])
        return engine
