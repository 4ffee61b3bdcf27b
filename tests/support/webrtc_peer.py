"""Test helpers for WebRTC ingest: an aiortc publisher speaking WHIP over real HTTP to a server run by
:mod:`tests.support.server`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack

from tests.support.server import TOKEN, http_request


def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ICE on loopback: aioice leaves 127.0.0.1 out of its host candidates."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class SyntheticTrack(VideoStreamTrack):
    """A 320x240 moving gradient at 30 fps; clearing ``flowing`` stops the frames without ending the track
    (a publisher that vanished without a word)."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def recv(self) -> av.VideoFrame:
        await self.flowing.wait()
        pts, time_base = await self.next_timestamp()
        img = np.zeros((240, 320, 3), np.uint8)
        img[:, :, 0] = np.uint8(pts // 3000 % 256)
        img[:, :, 1] = np.arange(320, dtype=np.uint8)[None, :]
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class Publisher:
    pc: RTCPeerConnection
    track: SyntheticTrack
    location: str


async def publish(port: int, name: str, token: str = TOKEN) -> Publisher:
    """An aiortc peer publishing a synthetic track to ``/v1/whip/<name>``; raises on any status but 201."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = SyntheticTrack()
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
    res = await asyncio.to_thread(
        http_request, port, "POST", f"/v1/whip/{name}", pc.localDescription.sdp.encode(), headers
    )
    if res.status != 201:
        await pc.close()
        raise AssertionError(f"WHIP POST answered {res.status}: {res.body!r}")
    assert res.headers["content-type"] == "application/sdp"
    await pc.setRemoteDescription(RTCSessionDescription(res.body.decode(), "answer"))
    return Publisher(pc, track, res.headers["location"])


async def unpublish(port: int, location: str, token: str = TOKEN) -> int:
    res = await asyncio.to_thread(http_request, port, "DELETE", location, None, {"Authorization": f"Bearer {token}"})
    return res.status
