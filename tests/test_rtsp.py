"""stream/rtsp.py on its own: the keyframes-only rule, the timeline, redaction, and
the reconnect loop against a port where nothing listens."""

from __future__ import annotations

import asyncio
import time

import pytest

from errors import ConfigError
from stream.backoff import Backoff
from stream.factory import make_source
from stream.frame import Frame
from stream.rtsp import KeyframeRule, RtspSource, Timeline, scrub
from stream.source import SourceState
from stream.spec import parse_source
from tests.support.rtsp import free_port


async def first(source: RtspSource) -> Frame:
    return await anext(aiter(source))


def test_keyframes_only_until_a_keyframe_gap_exceeds_the_period() -> None:
    rule = KeyframeRule(period=1.0, mode="auto")
    # Optimistic from the first keyframe (the reader holds the GOP's packets in case it is wrong).
    assert [rule.keyframe(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, True]
    assert rule.keyframe(5.0) is False  # the GOP grew past the period: decode everything again
    assert [rule.keyframe(t) for t in (6.0, 7.0, 8.0)] == [False, False, False]  # until it leaves the window
    assert rule.keyframe(9.0) is True
    slow = KeyframeRule(period=0.5, mode="auto")
    assert [slow.keyframe(t) for t in (0.0, 1.0, 2.0)] == [True, False, False]
    assert KeyframeRule(period=0.1, mode="keyframes").keyframe(0.0) is True
    assert KeyframeRule(period=10, mode="all").keyframe(0.0) is False


def test_a_packet_past_the_period_from_the_keyframe_is_an_overrun_and_counts_as_a_gap() -> None:
    rule = KeyframeRule(period=1.0, mode="auto")
    assert rule.overruns(0.5) is False  # no keyframe yet: nothing to measure from
    assert rule.keyframe(10.0) is True
    assert rule.overruns(11.0) is False  # within the period (5% slack)
    assert rule.overruns(11.1) is True
    assert rule.longest_gap == pytest.approx(1.1)
    assert rule.keyframe(12.0) is False  # the next keyframe keeps full decoding


def test_timeline_places_frames_by_camera_time_and_never_in_the_future() -> None:
    tl = Timeline(pts0=10.0, clock0=100.0, wall0=5000.0)
    assert tl.place(None, now=100.0, wall=5000.0) == (10.0, 5000.0)  # first frame: no timestamp
    # The next stamped frame anchors the camera clock to its arrival.
    assert tl.place(0.04, now=100.04, wall=5000.04) == pytest.approx((10.04, 5000.04))
    # Decoded 2 s late: its capture time stays the camera's, so its age shows the lag.
    pts, captured = tl.place(1.04, now=103.04, wall=5003.04)
    assert (pts, captured) == pytest.approx((11.04, 5001.04))
    # A camera clock running ahead is clamped to now.
    assert tl.place(9.0, now=104.0, wall=5004.0)[1] == 5004.0


def test_the_first_stamped_frame_of_a_connect_burst_lands_a_frame_after_the_unstamped_one() -> None:
    tl = Timeline(pts0=0.0, clock0=100.0, wall0=5000.0, interval=1 / 30)
    assert tl.place(None, now=100.0, wall=5000.0) == (0.0, 5000.0)
    # Arrived 1 ms later in the connect burst, but it is the next frame: 1/30 s after the first.
    assert tl.place(1 / 30, now=100.001, wall=5000.001)[0] == pytest.approx(1 / 30)
    # So the keyframe one second of camera time later lands on the sampler's 1 s slot, not 32 ms early.
    assert tl.place(1.0, now=101.0, wall=5001.0)[0] == pytest.approx(1.0)
    # Decoding keyframes only, the next decoded frame is a GOP later; the reader anchors the first frame
    # on the packets after it instead.
    tl = Timeline(pts0=0.0, clock0=100.0, wall0=5000.0, interval=1 / 30)
    tl.place(None, now=100.0, wall=5000.0)
    tl.anchor(0.0)
    assert tl.place(1.0, now=100.77, wall=5000.77)[0] == pytest.approx(1.0)


def test_scrub_removes_the_url_and_any_other_userinfo() -> None:
    url = "rtsp://admin:hunter2@10.0.0.5:554/live?token=abc"
    text = f"Server returned 401: '{url}' (redirect to rtsps://x:y@10.0.0.6/live)"
    out = scrub(text, url)
    assert "hunter2" not in out
    assert "admin" not in out
    assert "abc" not in out
    assert "x:y" not in out
    assert "rtsp://***@10.0.0.5:554/live" in out
    assert "rtsps://***@10.0.0.6/live" in out


def test_rtsp_urls_parse_and_never_show_their_credentials() -> None:
    spec = parse_source("door=rtsp://admin:hunter2@cam.local:8554/stream1")
    assert (spec.name, spec.kind) == ("door", "rtsp")
    assert spec.display_url == "rtsp://***@cam.local:8554/stream1"
    assert "hunter2" not in repr(spec)
    assert parse_source("rtsps://cam.example.com/x").name == "cam.example.com"
    with pytest.raises(ConfigError, match="invalid port") as err:
        parse_source("rtsp://admin:hunter2@cam:99999/x")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="no host"):
        parse_source("rtsp:///x")
    assert isinstance(make_source(spec, 1.0), RtspSource)


async def test_reconnects_with_backoff_goes_offline_and_closes_promptly() -> None:
    url = f"rtsp://user:pw@127.0.0.1:{free_port()}/cam"  # nothing listens: every open is refused
    source = RtspSource("cam", url, 1.0, offline_after=3, backoff=Backoff(base=0.01, cap=0.02, rand=lambda: 0.0))
    task = asyncio.create_task(first(source), name="test-consumer")
    states = set()
    deadline = time.monotonic() + 10
    while source.stats.reconnects < 5:
        states.add(source.stats.state)
        assert time.monotonic() < deadline, source.stats
        await asyncio.sleep(0.005)
    assert source.stats.state is SourceState.OFFLINE
    assert SourceState.RECONNECTING in states
    assert source.stats.error is not None
    assert "refused" in source.stats.error.lower()
    assert "pw" not in source.stats.error
    assert "user" not in source.stats.error
    await source.close()
    with pytest.raises(StopAsyncIteration):
        await task  # closing ends the consumer's iteration


async def test_close_interrupts_a_long_backoff() -> None:
    source = RtspSource("cam", f"rtsp://127.0.0.1:{free_port()}/cam", 1.0, backoff=Backoff(base=60, cap=60))
    task = asyncio.create_task(first(source), name="test-consumer")
    for _ in range(500):  # the first open is refused at once; then it waits out the long backoff
        if source.stats.state is not SourceState.STARTING:
            break
        await asyncio.sleep(0.01)
    assert source.stats.state is SourceState.RECONNECTING
    started = time.monotonic()
    await source.close()
    assert time.monotonic() - started < 5  # not the 30-60 s the backoff asked for
    with pytest.raises(StopAsyncIteration):
        await task
