"""Each stream's newest frame as a JPEG, for pages and scripts: ``GET /v1/streams/<name>/snapshot.jpg``
(``<name>`` percent-encoded) with ``Authorization: Bearer <token>``; a viewer sees its own streams only.

The frame is the newest one the stream's source delivered (:meth:`EngineAPI.latest_frame`, read on the event
loop; frames are frozen and read-only, so encoding one in a thread while the model reads it is safe). The
JPEG is made once per frame, in a thread (``asyncio.to_thread``), and kept until a newer frame comes: every
viewer asking about the same frame shares one encoding, also while it is still being made. The cache
holds one JPEG per stream that exists.

Answers: 200 ``image/jpeg`` with ``X-Livesight-Stream-Time`` (the frame's stream seconds) and
``X-Livesight-Captured-At`` (its capture time, seconds since the epoch); 401 without a valid token; 404
``unknown_stream`` (no such stream, or one the token may not see) or ``no_video`` (no frame yet); every
error as ``{"error": {"code", "message"}}``. Never cached by the client (``Cache-Control: no-store``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from errors import Internal, LivesightError, NoVideo, ShuttingDown, Unauthorized, UnknownStream
from stream.frame import Frame
from web import protocol
from web.auth import Authenticator
from web.events_http import error_response
from web.plain_http import HttpResponse

if TYPE_CHECKING:
    from engine.api import EngineAPI

STREAMS_PREFIX = "/v1/streams/"
_SNAPSHOT = re.compile(r"^/v1/streams/([^/]{1,256})/snapshot\.jpg$")
JPEG_QUALITY = 80
#: statuses for this endpoint's error codes (a stream without a frame is not there to fetch yet)
_STATUS = {"unknown_stream": HTTPStatus.NOT_FOUND, "no_video": HTTPStatus.NOT_FOUND}


def is_stream_path(path: str) -> bool:
    return path.startswith(STREAMS_PREFIX)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An ``[H, W, 3]`` uint8 RGB image as JPEG bytes (blocking: call it in a thread)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise Internal("the frame could not be encoded as JPEG")
    return bytes(data.tobytes())


@dataclass(frozen=True, slots=True)
class _Encoded:
    frame: Frame
    jpeg: asyncio.Future[bytes]  # shared by everyone asking for this frame


class StreamSnapshots:
    """``GET /v1/streams/<name>/snapshot.jpg`` (see the module doc)."""

    def __init__(self, auth: Authenticator, engine: Callable[[], EngineAPI | None]) -> None:
        self._auth = auth
        self._engine = engine
        self._cache: dict[str, _Encoded] = {}  # stream name -> its newest frame's JPEG (event loop only)
        #: JPEGs made so far (each one frame's; tests read it)
        self.encoded = 0

    async def get(self, target: str, authorization: str | None, address: str) -> HttpResponse:
        try:
            return await self._get(target, authorization, address)
        except LivesightError as exc:
            return error_response(exc, _STATUS)

    async def _get(self, target: str, authorization: str | None, address: str) -> HttpResponse:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send Authorization: Bearer <token>")
        who = self._auth.authenticate(token.strip(), address)
        engine = self._engine()
        if engine is None:
            raise ShuttingDown("the server is starting; try again in a moment")
        path = urlsplit(target).path
        m = _SNAPSHOT.match(path)
        if m is None:
            message = f"no route {path}; a stream's picture is at {STREAMS_PREFIX}<name>/snapshot.jpg"
            body = protocol.dumps({"error": {"code": "not_found", "message": message}}).encode()
            return HttpResponse(HTTPStatus.NOT_FOUND, body, [("Content-Type", "application/json")])
        name = unquote(m.group(1))
        if not who.sees(name):
            raise UnknownStream(f"no stream named {name!r}")
        frame = await engine.latest_frame(name)
        if frame is None:
            raise NoVideo(f"stream {name!r} has no frame yet; try again in a moment")
        jpeg = await self.jpeg(name, frame, engine.stream_names())
        headers = [
            ("Content-Type", "image/jpeg"),
            ("X-Livesight-Stream-Time", f"{frame.pts:.3f}"),
            ("X-Livesight-Captured-At", f"{frame.captured_at:.3f}"),
        ]
        return HttpResponse(HTTPStatus.OK, jpeg, headers)

    async def jpeg(self, name: str, frame: Frame, streams: list[str]) -> bytes:
        """``frame``'s JPEG, made once however many ask (``streams``: the names that exist, so the cache
        forgets removed streams)."""
        entry = self._cache.get(name)
        # The same frame: the same object in one process, an equal copy from a shard (serve --ray).
        if entry is None or (entry.frame.index, entry.frame.pts) != (frame.index, frame.pts):
            entry = _Encoded(frame, asyncio.ensure_future(asyncio.to_thread(encode_jpeg, frame.image)))
            self._cache[name] = entry
            self.encoded += 1
            for gone in set(self._cache) - set(streams) - {name}:
                del self._cache[gone]
        # Shielded: a viewer that leaves mid-encoding does not cancel the JPEG the others wait for.
        return await asyncio.shield(entry.jpeg)
