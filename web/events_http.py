"""The timeline over plain HTTP, for pages and scripts: ``GET /v1/events?stream=&watch=&kind=&since=&until=&
text=&limit=`` lists events newest first (the websocket ``events`` message's query and list), and
``GET /v1/events/<id>/snapshot.jpg`` serves an event's JPEG. Both need ``Authorization: Bearer <token>``;
a viewer sees its own streams' events only (another stream is ``unknown_stream``; another stream's
snapshot is 404, as a missing one is).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import tzinfo
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from errors import BadRequest, LivesightError, ShuttingDown, Unauthorized, UnknownStream
from store.events import EventQuery
from web import protocol
from web.auth import Authenticator
from web.plain_http import HttpResponse
from web.protocol import Events, events_filter, parse_since

if TYPE_CHECKING:
    from engine.api import EngineAPI

log = logging.getLogger("livesight.web")

EVENTS_PATH = "/v1/events"
_SNAPSHOT = re.compile(r"^/v1/events/(\d{1,18})/snapshot\.jpg$")
_PARAMS = ("stream", "watch", "kind", "since", "until", "text", "limit")
_STATUS = {
    "bad_request": HTTPStatus.BAD_REQUEST,
    "unknown_stream": HTTPStatus.NOT_FOUND,
    "unauthorized": HTTPStatus.UNAUTHORIZED,
    "unavailable": HTTPStatus.SERVICE_UNAVAILABLE,
    "busy": HTTPStatus.SERVICE_UNAVAILABLE,
}


def event_query(msg: Events, visible: frozenset[str] | None, now: float, tz: tzinfo | None) -> EventQuery:
    """The store query for an ``events`` request by someone who sees ``visible`` streams (None: every
    stream). A stream they may not see is :class:`UnknownStream`; a bad time bound :class:`BadRequest`."""
    if msg.stream is not None and visible is not None and msg.stream not in visible:
        raise UnknownStream(f"no stream named {msg.stream!r}")
    try:
        since = None if msg.since is None else parse_since(msg.since, now, tz)
        until = None if msg.until is None else parse_since(msg.until, now, tz)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return EventQuery(
        streams=frozenset([msg.stream]) if msg.stream is not None else visible,
        watch=msg.watch,
        kind=msg.kind,
        since=since,
        until=until,
        text=msg.text,
        limit=msg.limit,
    )


def is_events_path(path: str) -> bool:
    return path == EVENTS_PATH or path.startswith(EVENTS_PATH + "/")


class EventsEndpoint:
    """``GET /v1/events`` and ``GET /v1/events/<id>/snapshot.jpg`` (see the module doc)."""

    def __init__(self, auth: Authenticator, engine: Callable[[], EngineAPI | None], clock: Callable[[], float]) -> None:
        self._auth = auth
        self._engine = engine
        self._clock = clock

    async def get(self, target: str, authorization: str | None, address: str) -> HttpResponse:
        try:
            return await self._get(target, authorization, address)
        except LivesightError as exc:
            return error_response(exc)

    async def _get(self, target: str, authorization: str | None, address: str) -> HttpResponse:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send Authorization: Bearer <token>")
        who = self._auth.authenticate(token.strip(), address)
        engine = self._engine()
        if engine is None:
            raise ShuttingDown("the server is starting; try again in a moment")
        parts = urlsplit(target)
        m = _SNAPSHOT.match(parts.path)
        if m is not None:
            jpeg = await engine.snapshot(int(m.group(1)), who.streams)
            if jpeg is None:
                return _json(HTTPStatus.NOT_FOUND, {"error": {"code": "not_found", "message": "no such snapshot"}})
            return HttpResponse(HTTPStatus.OK, jpeg, [("Content-Type", "image/jpeg")])
        if parts.path != EVENTS_PATH:
            return _json(HTTPStatus.NOT_FOUND, {"error": {"code": "not_found", "message": f"no route {parts.path}"}})
        query = parse_qs(parts.query, keep_blank_values=False)
        unknown = sorted(set(query) - set(_PARAMS))
        if unknown:
            raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(_PARAMS)}")
        one = {k: v[-1] for k, v in query.items()}
        msg = events_filter(
            stream=one.get("stream"),
            watch=_int(one.get("watch"), "watch"),
            kind=one.get("kind"),
            since=one.get("since"),
            until=one.get("until"),
            text=one.get("text"),
            limit=_int(one.get("limit"), "limit") or 50,
        )
        found = await engine.events(event_query(msg, who.streams, self._clock(), engine.timezone))
        return _json(HTTPStatus.OK, {"events": [protocol.timeline_event(e) for e in found]})


def error_response(exc: LivesightError, statuses: Mapping[str, HTTPStatus] | None = None) -> HttpResponse:
    """An error of an HTTP endpoint as ``{"error": {"code", "message"}}`` with its status (``statuses``
    first, for codes an endpoint answers differently)."""
    code = protocol.error_code(exc)
    status = (statuses or {}).get(code) or _STATUS.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
    extra = [("WWW-Authenticate", 'Bearer realm="livesight"')] if status == HTTPStatus.UNAUTHORIZED else []
    return _json(status, {"error": {"code": code, "message": exc.message}}, extra)


def _int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name}: not an integer: {value!r}") from None


def _json(status: HTTPStatus, body: dict[str, object], extra: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, protocol.dumps(body).encode(), [("Content-Type", "application/json"), *(extra or [])])
