"""RTSP cameras: a self-healing reader per camera, PyAV over TCP or UDP, newest frame wins.

States: ``starting`` until the first frame, then ``live``; on any failure (open error, read timeout, the
camera ending the stream, no frames for ``stall_timeout``) ``reconnecting``, and ``offline`` once
``offline_after`` attempts in a row have failed. It never gives up: an offline camera keeps being retried
(capped exponential backoff with jitter) and goes ``live`` again by itself when it comes back.

Stalls are caught twice: a timeout interrupts an open or a read that blocks (a frozen camera keeps its
TCP connection open but sends nothing), and a frame watchdog in the read loop reconnects when packets
still arrive but no frame decodes for ``stall_timeout`` (plus one keyframe interval while decoding
keyframes only): a camera sending undecodable data, or no keyframe. The open is bounded by PyAV's
``timeout``; reads by FFmpeg's own socket timeout (the RTSP option ``timeout``, TCP and UDP alike), not
PyAV's read timeout: PyAV checks that one in an interrupt callback that takes the GIL, and FFmpeg calls it
several times per RTP packet, so with a few dozen 1080p cameras the reader threads queued for the GIL by
the hundred thousand per second and fell behind (measured: bench/ingest.py, docs/benchmarks.md).

Keyframes only: when every keyframe interval seen on this connection is at most the sampling period
(5% slack), each sampling slot still gets a frame within one period, so the decoder skips every
non-keyframe (``skip_frame = "NONKEY"``, ~4% of a core instead of ~14% for 1080p30). The rule is
checked again at every keyframe, so a camera whose GOP grows goes back to full decoding. It starts
optimistic, keyframes only from the first keyframe: learning the GOP by decoding everything first cost
every connection two seconds of full 1080p decoding, and 32 cameras connecting together (a restart, a
network blip) fell ~8 s behind live for their first seconds (bench/ingest.py). The packets since the last
keyframe are held meanwhile; a packet more than a sampling period past it shows the GOP is longer, and
the decoder is reset and decodes the held packets in full, so no sampling slot goes without its frame.

Transport (``tcp``, ``udp`` or ``auto``): ``auto`` lets FFmpeg fall back at SETUP, where a camera that
cannot stream one way says so (461 Unsupported Transport): ``rtsp_transport=tcp+udp`` with
``rtsp_flags=prefer_tcp`` asks for TCP first and then UDP within the same connection attempt, without a
second open or a second timeout. The preference is remembered per camera: a connection that opened but
delivered no frame (UDP blocked by a firewall after SETUP, say) makes the next attempt ask for the other
transport first (for UDP first FFmpeg also retries over TCP by itself when no UDP packet arrives).

Credentials: the URL with its credentials goes to PyAV and nowhere else. Logs, ``stats.error`` and
exceptions carry :func:`stream.spec.redact`'s form; FFmpeg error strings, which quote the URL, are
scrubbed before use, and PyAV exceptions are never chained (their ``filename`` holds the URL).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import av
import av.error

from errors import ConfigError, SourceError
from stream.backoff import Backoff
from stream.picture import Orienter
from stream.source import SourceState, ThreadedSource
from stream.spec import Transport, redact, scrub

__all__ = [
    "OPEN_OPTIONS",
    "KeyframeRule",
    "RtspSource",
    "Timeline",
    "TransportPreference",
    "read_timeout_option",
    "scrub",
]

log = logging.getLogger("stream.rtsp")

DecodeMode = Literal["auto", "all", "keyframes"]

#: Fast open: a small probe and no duration analysis cut opening from ~1.0 s to ~0.35 s (measured).
OPEN_OPTIONS = {"probesize": "32768", "analyzeduration": "0", "fpsprobesize": "0"}

#: Packets held while decoding keyframes only on trial (bounded): a 30 fps camera's packets over a
#: sampling period of 10 s (0.1 fps) are 300; past the bound the held ones are decoded in full at once.
MAX_HELD = 1024


def read_timeout_option(seconds: float) -> dict[str, str]:
    """FFmpeg's RTSP ``timeout`` option (microseconds) for reads that wait ``seconds`` for data at most."""
    return {"timeout": str(max(1, round(seconds * 1_000_000)))}


class TransportPreference:
    """Which transport a camera's next connection asks for first (see the module doc)."""

    def __init__(self, setting: Transport) -> None:
        self.setting = setting
        self.first: Literal["tcp", "udp"] = "udp" if setting == "udp" else "tcp"

    def options(self) -> dict[str, str]:
        """FFmpeg options for the next connection attempt."""
        if self.setting != "auto":
            return {"rtsp_transport": self.setting}
        if self.first == "tcp":
            return {"rtsp_transport": "tcp+udp", "rtsp_flags": "prefer_tcp"}
        return {"rtsp_transport": "udp+tcp"}  # FFmpeg tries the lowest flag first: UDP

    def no_frames(self) -> None:
        """The last connection opened but delivered no frame: ask for the other transport first next time."""
        if self.setting == "auto":
            self.first = "udp" if self.first == "tcp" else "tcp"


class KeyframeRule:
    """Decides whether decoding keyframes only still keeps the sampling rate (see the module doc)."""

    def __init__(self, period: float, mode: DecodeMode, window: int = 4) -> None:
        self.period = period
        self.mode = mode
        self._last: float | None = None
        self._gaps: deque[float] = deque(maxlen=window)

    @property
    def unseen(self) -> bool:
        """No keyframe time recorded yet."""
        return self._last is None

    @property
    def longest_gap(self) -> float:
        """The longest recent keyframe interval in seconds (0 before two keyframes)."""
        return max(self._gaps, default=0.0)

    def keyframe(self, t: float) -> bool:
        """Record a keyframe at stream time ``t`` seconds; returns whether to skip non-keyframes now."""
        if self._last is not None and t > self._last:
            self._gaps.append(t - self._last)
        self._last = t
        if self.mode != "auto":
            return self.mode == "keyframes"
        # Optimistic: keyframes only until an interval longer than the period is seen (the reader
        # holds the packets since the keyframe and replays them in full if it is; see the module doc).
        return max(self._gaps, default=0.0) <= self.period * 1.05

    def overruns(self, t: float) -> bool:
        """Whether a packet at stream time ``t`` lies past the sampling period from the last keyframe: the
        GOP is longer than the period (recorded as a gap of at least that length)."""
        if self._last is None or t - self._last <= self.period * 1.05:
            return False
        self._gaps.append(t - self._last)
        return True


class Timeline:
    """Places one connection's frames in source time (``pts``) and wall-clock capture time.

    Capture times follow the camera's clock from the connection's first frame, not our arrival times,
    so a reader that falls behind shows up as frame age; they are never in the future. Frames without a
    timestamp (the first one often has none) are placed at their arrival; the first stamped frame after
    one is placed at least ``interval`` (one frame, when the stream says its rate) after it: frames arrive
    in bursts at connect, and anchoring the camera clock on a burst put every later frame a little early,
    which made the sampler miss a whole GOP's slot when decoding keyframes only.
    """

    def __init__(self, pts0: float, clock0: float, wall0: float, interval: float = 0.0) -> None:
        self._pts0 = pts0  # source time of the connection's first frame
        self._clock0 = clock0
        self._wall0 = wall0
        self._interval = interval
        self._t0: float | None = None  # camera time of the first frame; learnt from the first stamped one
        self._started = False

    def anchor(self, t: float) -> None:
        """The camera time of an unstamped first frame, learnt from the packets after it (keyframes only:
        the next decoded frame may be a GOP later, too late to anchor on its arrival)."""
        if self._started and self._t0 is None:
            self._t0 = t

    def place(self, t: float | None, now: float, wall: float) -> tuple[float, float]:
        """``(pts, captured_at)`` for a frame with camera time ``t`` (seconds or None) decoded at ``now``."""
        if not self._started:
            self._started = True
            self._t0 = t
        elif t is not None and self._t0 is None:
            self._t0 = t - max(now - self._clock0, self._interval)
        offset = now - self._clock0 if t is None or self._t0 is None else max(0.0, t - self._t0)
        return self._pts0 + offset, min(wall, self._wall0 + offset)


class RtspSource(ThreadedSource):
    """An RTSP(S) camera read in its own thread; frames are sampled at ``fps`` and the newest wins.

    Args:
        url: ``rtsp://`` or ``rtsps://`` URL, credentials allowed (never shown).
        transport: ``tcp``, ``udp`` or ``auto`` (TCP first, then UDP; see the module doc).
        guard: called with the URL before every connection; returns the URL to open or raises
            :class:`ConfigError` (a host the allow-list no longer admits); see :mod:`stream.policy`.
        decode: ``auto`` (keyframes only when the rule allows), ``all`` or ``keyframes``.
        open_timeout / read_timeout: seconds before a blocked open / read is abandoned.
        stall_timeout: seconds without a decoded frame before the connection is dropped.
        offline_after: consecutive failed attempts before the state says ``offline``.
        backoff: reconnect delays (inject one with a fixed ``rand`` for tests).
    """

    def __init__(
        self,
        name: str,
        url: str,
        fps: float,
        *,
        transport: Transport = "auto",
        guard: Callable[[str], str] | None = None,
        decode: DecodeMode = "auto",
        open_timeout: float = 5.0,
        read_timeout: float = 5.0,
        stall_timeout: float = 5.0,
        offline_after: int = 3,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, redact(url), fps)
        self.wall_clock = True  # capture times follow the camera's clock from its first frame (Timeline)
        self._url = url
        self._transport = TransportPreference(transport)
        self._guard = guard
        self._decode = decode
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._stall_timeout = stall_timeout
        self._offline_after = offline_after
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._wall = wall
        self._failures = 0  # consecutive attempts without a frame
        self._decoded = 0  # frames decoded on the current connection
        self._origin: float | None = None  # clock() at the first frame ever: pts 0
        self.keyframes_only = False  # what the decoder does right now (read by benchmarks)
        self.replays = 0  # GOPs decoded again in full after keyframes only proved too sparse (tests)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            if attempt:
                self.stats.reconnects += 1
            attempt += 1
            try:
                self._connection()
                reason = "the camera ended the stream"
            except SourceError as exc:
                reason = exc.message
            if self._stop.is_set():
                return
            self._failures += 1
            offline = self._failures >= self._offline_after
            was = self.stats.state
            # The error first: a change of state is announced at once (the watcher reads both).
            self.stats.error = reason
            self.stats.state = SourceState.OFFLINE if offline else SourceState.RECONNECTING
            delay = self._backoff.next()
            # Warn on a change of state only: an offline camera retried every few seconds for hours
            # must not flood the log.
            level = logging.WARNING if self.stats.state is not was else logging.DEBUG
            log.log(level, "stream %s: %s; %s, retrying in %.1f s", self.name, reason, self.stats.state.value, delay)
            if not self._sleep(delay):
                return

    def _fail(self, what: str, exc: Exception, url: str) -> SourceError:
        detail = exc.strerror if isinstance(exc, av.error.FFmpegError) and exc.strerror else str(exc)
        # Scrubbed for the URL opened (its host may be pinned to an address) and the one configured.
        return SourceError(f"{what} {self.display_url}: {scrub(scrub(str(detail), url), self._url)}", retryable=True)

    def _connection(self) -> None:
        """One connection: open, read until it fails or ends. Returns on end of stream or stop."""
        url = self._url
        if self._guard is not None:
            try:
                url = self._guard(url)  # checked again at every connection: DNS answers change
            except ConfigError as exc:
                raise SourceError(exc.message, retryable=True) from None
        try:
            container = self._open(url)
        except av.error.FFmpegError as exc:
            raise self._fail("cannot open", exc, url) from None
        self._decoded = 0
        try:
            with container:
                if not container.streams.video:
                    raise SourceError(f"{self.display_url} has no video stream", retryable=True)
                vstream = container.streams.video[0]
                try:
                    self._read(container, vstream)
                except av.error.FFmpegError as exc:
                    raise self._fail("lost", exc, url) from None
        finally:
            if self._decoded == 0 and not self._stop.is_set():
                self._transport.no_frames()

    def _open(self, url: str) -> Any:
        """Open the camera: the open bounded by PyAV's timeout, reads by FFmpeg's (see the module doc)."""
        options = {**OPEN_OPTIONS, **self._transport.options(), **read_timeout_option(self._read_timeout)}
        return av.open(url, mode="r", options=options, timeout=(self._open_timeout, None))

    def _read(self, container: Any, vstream: Any) -> None:
        rule = KeyframeRule(self._sampler.period, self._decode)
        ctx = vstream.codec_context
        # Decoding runs in this reader's thread: cameras already spread over the cores one thread each, and
        # FFmpeg's slice threads (as many per camera as there are cores, idle for the usual one-slice
        # frame) only added threads to wake: 75 threads for 24 cameras on 2 cores instead of 28, and ~5%
        # more CPU (bench/ingest.py).
        ctx.thread_count = 1
        base = vstream.time_base
        rate = vstream.average_rate or vstream.guessed_rate
        interval = 1.0 / float(rate) if rate else 0.0
        # A new decoder decodes everything unless told to skip from the start.
        self.keyframes_only = self._decode == "keyframes"
        if self.keyframes_only:
            ctx.skip_frame = "NONKEY"
        last_frame = self._clock()  # the watchdog's reference: the open counts as progress
        timeline: Timeline | None = None
        orienter = Orienter()  # per connection: a camera's orientation SEI repeats with its keyframes
        held: list[Any] = []  # packets since the last keyframe while skipping on trial (auto)
        unplaced = False  # the first keyframe had no time; the next packet with one places it
        for packet in container.demux(vstream):
            if self._stop.is_set():
                return
            now = self._clock()
            # Decoding keyframes only, frames come one GOP apart: that is no stall.
            limit = self._stall_timeout + (rule.longest_gap if self.keyframes_only else 0.0)
            if now - last_frame > limit:
                raise SourceError(f"no frame from {self.display_url} for {now - last_frame:.1f} s", retryable=True)
            t = float(packet.pts * base) if packet.pts is not None and base is not None else None
            if t is not None and unplaced:  # the first keyframe had no time: one frame before this packet
                unplaced = False
                rule.keyframe(t - interval)
                if timeline is not None:
                    timeline.anchor(t - interval)
            decode: list[Any] = [packet]
            if packet.is_keyframe and t is None and self._decode == "auto" and rule.unseen:
                # The connection's first packet often has no time: try keyframes only from it as well.
                ctx.skip_frame = "NONKEY"
                self.keyframes_only = unplaced = True
                held = [packet]
            elif packet.is_keyframe and t is not None:
                skip = rule.keyframe(t)
                if skip != self.keyframes_only:  # switch only at a keyframe, where both modes agree
                    ctx.skip_frame = "NONKEY" if skip else "DEFAULT"
                    self.keyframes_only = skip
                held = [packet] if skip and self._decode == "auto" else []
            elif held:
                held.append(packet)
                if (t is not None and rule.overruns(t)) or len(held) > MAX_HELD:
                    # The GOP is longer than the sampling period: decode it again, in full.
                    ctx.flush_buffers()
                    ctx.skip_frame = "DEFAULT"
                    self.keyframes_only = False
                    decode, held = held, []
                    self.replays += 1
            for frame in (f for p in decode for f in p.decode()):
                self._decoded += 1
                orienter.update(frame)
                now = last_frame = self._clock()
                if timeline is None:
                    self._on_first_frame(now)
                    assert self._origin is not None
                    timeline = Timeline(now - self._origin, now, self._wall(), interval)
                pts, captured_at = timeline.place(frame.time, now, self._wall())
                if not self._sampler.due(pts):
                    continue
                self._emit(pts, orienter.rgb(frame), captured_at)

    def _on_first_frame(self, now: float) -> None:
        if self._origin is None:
            self._origin = now
        was = self.stats.state
        self._failures = 0
        self._backoff.reset()
        self.stats.error = None  # before the state: its change is announced at once
        self.stats.state = SourceState.LIVE
        if was is not SourceState.STARTING:
            log.info("stream %s: live again after %d reconnect(s)", self.name, self.stats.reconnects)
        else:
            log.info("stream %s: live", self.name)
