"""A publisher sending video over WebRTC (a browser, OBS, ffmpeg, GStreamer via WHIP), received with aiortc.

One :class:`RTCPeerConnection` per publisher. aiortc decodes every received frame in its own thread and
queues it without bound, so a reader task drains the track as frames come, keeps only the frames the
:class:`Sampler` wants, and holds the newest of those in a one-frame slot (a replaced frame counts as a
drop). Conversion to RGB happens only for the frames handed on, off the event loop. aiortc objects stay
in this module: the engine sees a :class:`~stream.source.Source` yielding :class:`Frame`.

The stream ends (state ``ended``) when the publisher's track ends (it closed the connection or sent RTCP
BYE), when the connection fails or closes, or when no frame has arrived for ``stall_s`` seconds (a
publisher that vanished without a word: ICE consent alone would take 30 s to notice).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

from errors import BadRequest
from stream.frame import Frame
from stream.picture import to_rgb
from stream.sampler import Sampler
from stream.source import SourceState, SourceStats

log = logging.getLogger("livesight.webrtc")

#: Seconds without a received frame after which the publisher is taken as gone.
STALL_S = 10.0


class WebRTCSource:
    """A source fed by one WebRTC publisher. Create it, :meth:`accept` the offer, iterate, :meth:`close`.

    ``session`` is an unguessable id for the publisher's session (the WHIP resource); ``close`` is
    idempotent and frees everything: the reader task and the peer connection (with its ICE, DTLS and
    decoder thread).
    """

    lossless = False  # a publisher keeps real time: the consumer gets the newest frame
    wall_clock = True  # frames are stamped when they arrive

    def __init__(self, name: str, fps: float, *, stall_s: float | None = None) -> None:
        self.name = name
        self.display_url = "webrtc"
        self.stats = SourceStats()
        self.session = secrets.token_urlsafe(16)
        self._sampler = Sampler(fps)
        self._stall_s = STALL_S if stall_s is None else stall_s
        # No ICE servers: the default would query a public STUN server, which a LAN or offline host lacks
        # and which only delays gathering; host candidates are what a publisher on the same network needs.
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._track: MediaStreamTrack | None = None
        self._reader: asyncio.Task[None] | None = None
        self._newest: Frame | None = None
        self._pending: av.VideoFrame | None = None
        self._pending_pts = 0.0
        self._pending_at = 0.0
        self._ready = asyncio.Event()
        self._done = False
        self._closer: asyncio.Task[None] | None = None
        self._index = 0
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)

    # --- signaling -----------------------------------------------------------------------------
    async def accept(self, offer_sdp: str) -> str:
        """Answer the publisher's SDP offer; returns the SDP answer (all ICE candidates included).

        Raises :class:`BadRequest` for an offer that is not SDP, sends no video, or cannot be negotiated
        (aiortc refuses it): the offer is the client's, so is the fault. The caller closes the source when
        this raises.
        """
        check_offer(offer_sdp)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if self._track is None:
                raise BadRequest("the offer sends no video track")
            for transceiver in self._pc.getTransceivers():
                # Audio (OBS and ffmpeg send it) would pile up in aiortc's unbounded queue: decline it.
                if transceiver.kind != "video" or transceiver.receiver.track is not self._track:
                    transceiver.direction = "inactive"
            answer = await self._pc.createAnswer()
            await self._pc.setLocalDescription(as_dtls_server(answer, offer_sdp))
            if any(t.receiver.transport is None for t in self._pc.getTransceivers()):
                # A section aiortc answered but gave no transport (a broken BUNDLE group, a reused mid):
                # its connect task would fail on it in the background.
                raise BadRequest("the offer's media sections cannot all be bundled onto one transport")
        except BadRequest:
            raise
        except Exception as exc:
            # aiortc raises whatever its parser or state machine met (ValueError, AttributeError, even a
            # StopIteration turned RuntimeError, OperationError) for offers it cannot use.
            log.info("webrtc %s: offer refused by aiortc: %s: %s", self.name, type(exc).__name__, exc)
            raise BadRequest(f"the offer cannot be negotiated: {type(exc).__name__}: {exc}") from None
        self._reader = asyncio.create_task(self._read(self._track), name=f"webrtc-reader:{self.name}")
        return str(self._pc.localDescription.sdp)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self._track is None:
            self._track = track

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        log.debug("webrtc %s: connection %s", self.name, state)
        if state in ("failed", "closed") and not self._done:
            self._finish(None if state == "closed" else "the WebRTC connection failed")

    # --- frames --------------------------------------------------------------------------------
    async def _read(self, track: MediaStreamTrack) -> None:
        """Drain the track (aiortc's queue is unbounded); keep only sampled frames, newest wins."""
        start: float | None = None
        why: str | None = None
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(track.recv(), self._stall_s)
                except MediaStreamError:
                    break  # the publisher ended the track, or the connection closed
                except TimeoutError:
                    why = f"no video from the publisher for {self._stall_s:g} s"
                    break
                if not isinstance(frame, av.VideoFrame):
                    continue
                if self.stats.state is SourceState.STARTING:
                    self.stats.state = SourceState.LIVE
                t = float(frame.time) if frame.time is not None else time.monotonic()
                start = t if start is None else start
                pts = t - start
                if not self._sampler.due(pts):
                    continue
                if self._pending is not None:
                    self.stats.dropped += 1
                self._pending, self._pending_pts, self._pending_at = frame, pts, time.time()
                self._ready.set()
        finally:
            self._finish(why)

    def _finish(self, why: str | None) -> None:
        if self._done:
            return
        self._done = True
        if why is not None:
            self.stats.error = why
            log.info("webrtc %s: %s", self.name, why)
        self.stats.state = SourceState.ENDED
        self._ready.set()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        while True:
            vframe = self._pending
            if vframe is None:
                if self._done:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            self._pending = None
            pts, captured_at = self._pending_pts, self._pending_at
            image = await asyncio.to_thread(to_rgb, vframe)
            frame = Frame(stream=self.name, index=self._index, pts=pts, captured_at=captured_at, image=image)
            self._index += 1
            self.stats.frames += 1
            yield frame

    async def close(self) -> None:
        if self._closer is None:
            self._finish(None)
            reader = self._reader
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self._pending = None
            # aiortc closes a connection itself when the peer's DTLS closes, and a second close() awaits
            # the first one's future: a cancelled caller would cancel that future and break the close under
            # way. So the close runs in its own task, which callers await shielded.
            self._closer = asyncio.create_task(self._pc.close(), name=f"webrtc-close:{self.name}")
        try:
            await asyncio.shield(self._closer)
        except AttributeError as exc:
            # aiortc's close trips over a transceiver that a refused offer left without a transport; what
            # it had started is stopped by then, and nothing else remains to free.
            log.debug("webrtc %s: closing a connection whose negotiation failed: %s", self.name, exc)


def as_dtls_server(answer: RTCSessionDescription, offer_sdp: str) -> RTCSessionDescription:
    """``answer`` with livesight as the DTLS server (``a=setup:passive``) wherever the offer lets us choose.

    aiortc answers an ``actpass`` offer as the DTLS client, and as a client it offers ECDSA cipher suites
    only (its own certificate is ECDSA; aiortc declined to add RSA suites, aiortc#1421), so a publisher
    holding an RSA certificate (GStreamer's webrtcbin, some SFUs) fails the handshake with "no shared
    cipher". As the server, aiortc picks an ECDSA suite from the client's list, which every WebRTC stack
    offers, whatever the client's own certificate. ``setLocalDescription`` takes the DTLS role from the
    answer's ``a=setup`` (aiortc's RTCPeerConnection.setLocalDescription, "set DTLS role"), so editing the
    attribute is enough. An offer that is itself ``active`` already made aiortc the server; one that is
    ``passive`` leaves us the client, as it must.
    """
    if "a=setup:actpass" not in offer_sdp:
        return answer
    sdp = answer.sdp.replace("a=setup:active", "a=setup:passive")
    return RTCSessionDescription(sdp=sdp, type=answer.type)


def check_offer(sdp: str) -> None:
    """Refuse, before any peer connection sees it, an offer that is not SDP or whose audio or video
    sections lack what every WebRTC offer carries (a direction, ICE credentials, a DTLS fingerprint):
    aiortc would otherwise half-apply it and fail in ways that leave its connection unable to close."""
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the text trips it on
        raise BadRequest(f"not a usable SDP offer: {type(exc).__name__}: {exc}") from None
    media = [m for m in desc.media if m.kind in ("audio", "video")]
    if not any(m.kind == "video" for m in media):
        raise BadRequest("the offer sends no video track")
    for m in media:
        missing = [what for what, value in (("direction", m.direction), ("ICE", m.ice), ("DTLS", m.dtls)) if not value]
        if not m.rtp.muxId:
            missing.append("mid")
        if missing:
            raise BadRequest(f"the offer's {m.kind} section has no {' or '.join(missing)} attributes")
    mids = [m.rtp.muxId for m in desc.media]
    if len(set(mids)) != len(mids):
        raise BadRequest("the offer repeats a media section's mid")
    for group in desc.group:
        if group.semantic == "BUNDLE" and set(group.items) != set(mids):
            raise BadRequest("the offer's BUNDLE group does not list exactly its media sections")
