"""WHIP interop with publishers whose DTLS certificate is RSA: GStreamer's webrtcbin (a real third-party
stack, run with Debian's python3 and gi) and an aiortc peer forced onto an RSA certificate.

aiortc offers only ECDSA cipher suites when it is the DTLS client, so a publisher holding an RSA certificate
can complete DTLS only if livesight answers as the DTLS server (``a=setup:passive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from stream.webrtc import WebRTCSource
from tests.support.rtsp import SYSTEM_PYTHON
from tests.support.server import TOKEN, http_request, info, running_server, until
from tests.support.webrtc_peer import SyntheticTrack, loopback_ice

WHIP_GST = Path(__file__).parent / "support" / "whip_gst.py"


class GstPublisher:
    """The webrtcbin publisher process and what it has printed so far (read by a task as it comes)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._pump = asyncio.create_task(self._read(), name="gst-publisher-output")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            self.lines.append(raw.decode(errors="replace").strip())

    def said(self, prefix: str) -> str | None:
        """The first line starting with ``prefix``; raises once the publisher reported a failure or exited."""
        for line in self.lines:
            if line.startswith(prefix):
                return line
        self.check()
        return None

    def check(self) -> None:
        """Raises once the publisher has reported a failure or exited."""
        if any(line.startswith("ERROR") for line in self.lines) or self._pump.done():
            raise AssertionError(f"the publisher failed or exited: {self.lines}")

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._pump


@contextlib.asynccontextmanager
async def gst_publisher(port: int, name: str) -> AsyncIterator[GstPublisher]:
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        str(WHIP_GST),
        f"http://127.0.0.1:{port}/v1/whip/{name}",
        "--token",
        TOKEN,
        "--loopback",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    pub = GstPublisher(proc)
    try:
        yield pub
    finally:
        await pub.close()


async def test_gstreamer_webrtcbin_publishes_over_whip(tiny: SmolVLMAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    loopback_ice(monkeypatch)  # both ends on 127.0.0.1 (the publisher with --loopback)
    async with running_server(tiny, EngineSettings(fps=4.0), ()) as srv, gst_publisher(srv.port, "gst") as pub:
        await until(lambda: pub.said("ANSWERED") is not None, 30, "the WHIP answer")
        assert (pub.said("ANSWERED") or "").startswith("ANSWERED /v1/whip/gst/")
        assert isinstance(srv.engine.source("gst"), WebRTCSource)

        def frames() -> int:
            pub.check()  # fail at once on the publisher's error (DTLS failing says "the peer connection failed")
            return int(getattr(info(srv.engine, "gst"), "memory_frames", 0))

        await until(lambda: frames() >= 3, 30, "frames in memory")
        cam = info(srv.engine, "gst")
        assert cam is not None
        assert cam.state == "live"
        assert cam.memory_tokens > 0
        assert pub.said("CONNECTED") is not None


def rsa_certificate() -> RTCCertificate:
    """An aiortc certificate with an RSA key (aiortc itself only makes ECDSA ones)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa-publisher")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return RTCCertificate(key=key, cert=cert)  # type: ignore[arg-type]  # typed for EC keys, works with any


async def test_an_aiortc_publisher_with_an_rsa_certificate(
    tiny: SmolVLMAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    loopback_ice(monkeypatch)
    async with running_server(tiny, EngineSettings(fps=4.0), ()) as srv:
        # Only the publisher's connection gets the RSA certificate: the server's is made later, unpatched.
        with monkeypatch.context() as m:
            m.setattr(RTCCertificate, "generateCertificate", classmethod(lambda cls: rsa_certificate()))
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver(SyntheticTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
            res = await asyncio.to_thread(
                http_request, srv.port, "POST", "/v1/whip/rsa", pc.localDescription.sdp.encode(), headers
            )
            assert res.status == 201, res.body
            answer = res.body.decode()
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await until(lambda: getattr(info(srv.engine, "rsa"), "memory_frames", 0) >= 2, 20, "frames in memory")
            assert pc.connectionState == "connected"
            # The publisher was the DTLS client: the server chose the cipher suite, from its ECDSA list.
            assert "a=setup:passive" in answer
            assert "a=setup:active" not in answer
        finally:
            await pc.close()
