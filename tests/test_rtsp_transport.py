"""RTSP transport per camera (tcp, udp, auto) against GStreamer RTSP servers that stream one way only, and
the setting in the streams file and on the command line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from errors import ConfigError
from livesight.cli import main
from livesight.config_file import parse_streams
from stream.backoff import Backoff
from stream.factory import make_source
from stream.frame import Frame
from stream.rtsp import RtspSource, TransportPreference
from stream.source import SourceState
from stream.spec import Transport, apply_transports, parse_source
from tests.support.rtsp import RtspServer


async def first_frame(source: RtspSource) -> Frame:
    return await anext(aiter(source))


def camera(protocols: str) -> Iterator[RtspServer]:
    server = RtspServer(extra=("--protocols", protocols))
    server.start()
    yield server
    server.close()


@pytest.fixture
def udp_only() -> Iterator[RtspServer]:
    yield from camera("udp")


@pytest.fixture
def tcp_only() -> Iterator[RtspServer]:
    yield from camera("tcp")


async def frames_from(source: RtspSource, n: int, within: float = 20.0) -> list[Frame]:
    frames = aiter(source)
    try:
        return [await asyncio.wait_for(anext(frames), within) for _ in range(n)]
    finally:
        await source.close()


async def never_live(source: RtspSource, failures: int = 2, within: float = 20.0) -> str:
    """Waits until the source has failed ``failures`` times without a frame; returns its error."""
    task = asyncio.create_task(first_frame(source), name="test-consumer")
    deadline = time.monotonic() + within
    try:
        while source.stats.reconnects < failures:
            assert source.stats.frames == 0
            assert time.monotonic() < deadline, source.stats.error
            await asyncio.sleep(0.05)
        assert source.stats.state in (SourceState.RECONNECTING, SourceState.OFFLINE)
        return source.stats.error or ""
    finally:
        await source.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def live_within(source: RtspSource, live: bool, seconds: float) -> None:
    """Waits until the source is (``live``) or is not live, ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    while (source.stats.state is SourceState.LIVE) is not live:
        assert time.monotonic() < deadline, f"live is not {live} within {seconds} s: {source.stats.error}"
        await asyncio.sleep(0.05)


def quick_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.1, rand=lambda: 0.0)


@pytest.mark.parametrize("transport", ["auto", "udp"])
async def test_a_udp_only_camera_goes_live(udp_only: RtspServer, transport: Transport) -> None:
    spec = apply_transports([parse_source(f"cam={udp_only.url}")], [f"cam={transport}"])[0]
    source = make_source(spec, 4.0)
    assert isinstance(source, RtspSource)
    frames = await frames_from(source, 3)
    assert [f.image.shape for f in frames] == [(360, 640, 3)] * 3
    assert source.stats.reconnects == 0  # auto found UDP within the first connection attempt


async def test_a_frozen_udp_camera_is_detected_and_recovered(udp_only: RtspServer) -> None:
    """Reads are bounded by FFmpeg's socket timeout (the RTSP ``timeout`` option): over UDP too, a camera
    that stops sending (frozen, its RTSP connection open) is left and found again once it sends again."""
    source = RtspSource("cam", udp_only.url, 4.0, transport="udp", read_timeout=2.0, backoff=quick_backoff())
    frames = aiter(source)
    try:
        await asyncio.wait_for(anext(frames), timeout=20)
        udp_only.freeze()
        await live_within(source, False, 10)
        assert source.stats.error is not None
        udp_only.thaw()
        await asyncio.wait_for(anext(frames), timeout=20)
        await live_within(source, True, 20)
        assert source.stats.reconnects >= 1
    finally:
        udp_only.thaw()
        await source.close()


async def test_tcp_only_setting_cannot_reach_a_udp_only_camera(udp_only: RtspServer) -> None:
    source = RtspSource("cam", udp_only.url, 4.0, transport="tcp", backoff=quick_backoff())
    assert "not supported" in (await never_live(source)).lower()


@pytest.mark.parametrize("transport", ["auto", "tcp"])
async def test_a_tcp_only_camera_goes_live(tcp_only: RtspServer, transport: Transport) -> None:
    frames = await frames_from(RtspSource("cam", tcp_only.url, 4.0, transport=transport), 3)
    assert len(frames) == 3


async def test_udp_only_setting_cannot_reach_a_tcp_only_camera(tcp_only: RtspServer) -> None:
    source = RtspSource("cam", tcp_only.url, 4.0, transport="udp", backoff=quick_backoff())
    assert "not supported" in (await never_live(source)).lower()


def test_auto_asks_for_tcp_first_and_switches_after_a_connection_without_frames() -> None:
    pref = TransportPreference("auto")
    assert pref.options() == {"rtsp_transport": "tcp+udp", "rtsp_flags": "prefer_tcp"}
    pref.no_frames()  # TCP was accepted at SETUP but nothing came: UDP first next time
    assert pref.options() == {"rtsp_transport": "udp+tcp"}
    pref.no_frames()
    assert pref.options()["rtsp_flags"] == "prefer_tcp"
    fixed = TransportPreference("udp")
    fixed.no_frames()
    assert fixed.options() == {"rtsp_transport": "udp"}  # an explicit setting is never second-guessed
    assert TransportPreference("tcp").options() == {"rtsp_transport": "tcp"}


def test_the_streams_file_sets_and_validates_transports() -> None:
    specs = parse_streams(
        {
            "streams": [
                {"name": "door", "url": "rtsp://10.0.0.5/s", "transport": "udp"},
                {"name": "yard", "url": "rtsp://10.0.0.6/s"},
                {"name": "gate", "url": "rtsps://10.0.0.7/s", "transport": "tcp"},
            ]
        }
    )
    assert [s.transport for s in specs] == ["udp", "auto", "tcp"]
    with pytest.raises(ConfigError) as err:
        parse_streams(
            {
                "streams": [
                    {"name": "a", "url": "rtsp://10.0.0.5/s", "transport": "quic"},
                    {"name": "b", "url": "demo", "transport": "tcp"},
                    {"name": "c", "url": "rtsps://10.0.0.7/s", "transport": "udp"},
                ]
            }
        )
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "streams[0] ('a'): transport:" in text
    assert "streams[1] ('b'): transport: only RTSP cameras" in text
    assert "streams[2] ('c'): transport: rtsps://" in text


def test_transport_settings_on_the_command_line() -> None:
    specs = [parse_source("door=rtsp://u:p@10.0.0.5/s"), parse_source("demo")]
    out = apply_transports(specs, ["door=UDP"])
    assert out[0].transport == "udp"
    assert out[1] == specs[1]
    with pytest.raises(ConfigError) as err:
        apply_transports(specs, ["gate=udp", "door", "demo=tcp", "door=quic"])
    text = str(err.value)
    assert "no stream named 'gate'" in text
    assert "use NAME=MODE" in text
    assert "only RTSP cameras" in text
    assert "not 'quic'" in text
    assert "u:p" not in text


def test_the_cli_reports_a_transport_for_an_unknown_stream(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--source", "door=rtsp://10.0.0.5/s", "--transport", "gate=udp", "--model", "tiny-random"]
    assert main(argv, {"LIVESIGHT_TOKEN": "t" * 16}) == 2
    assert "no stream named 'gate'" in capsys.readouterr().err
