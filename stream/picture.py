"""A decoded PyAV frame to the RGB picture a source hands on: bounded in size and shown upright.

Phones record portrait video as landscape frames plus a *display matrix* (MP4 ``tkhd``), and H.264/HEVC
cameras can send a display-orientation SEI; FFmpeg attaches either to each decoded frame as
``DISPLAYMATRIX`` side data (PyAV 18 exposes it as ``frame.side_data``). Players apply it; the model must
see what a person sees, so the picture is transformed here, for files and cameras alike.

The matrix ``[a b u; c d v; x y w]`` (16.16 fixed point, row-major, FFmpeg's ``libavutil/display.h``) maps a
source pixel ``(p, q)`` (column, row) to ``(a*p + c*q + x, b*p + d*q + y)`` on screen. The eight right-angle
rotations and mirrors have ``a, b, c, d`` in {-1, 0, 1} and are applied exactly, as array views; any
other matrix (a 45-degree turn, a scale) is left alone.

A container's matrix comes with every frame, but FFmpeg attaches an H.264 display-orientation SEI only to
the frame that carried it (measured with PyAV 18), while the SEI itself persists until the next one
(``display_orientation_repetition_period``), so :class:`Orienter` keeps the last one seen per connection.
"""

from __future__ import annotations

import logging

import av
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import VideoReformatter

log = logging.getLogger("stream.picture")

#: Largest side of the pictures sources hand on; the model downsizes further, this only bounds memory.
MAX_SIDE = 1280

Orientation = tuple[int, int, int, int]  # (a, b, c, d) of the display matrix, each -1, 0 or 1
UPRIGHT: Orientation = (1, 0, 0, 1)


def orientation(frame: av.VideoFrame) -> Orientation | None:
    """The right-angle display transform attached to ``frame``; None when it carries no display matrix."""
    # Not ``frame.side_data``: PyAV caches that container on the frame and the container holds the frame,
    # a reference cycle, so every decoded picture (3 MB at 1080p) waited for the cyclic garbage collector,
    # which this code rarely wakes: 1.3 GB more for 16 cameras after 5 s (bench/ingest.py ``memory``),
    # and the decoder allocated (and zeroed) a fresh buffer for every frame. A container of our own holds
    # the frame, not the other way round, and goes with its last reference.
    side = SideDataContainer(frame).get(SideDataType.DISPLAYMATRIX)  # type: ignore[call-arg]  # stub lacks __init__
    if side is None:
        return None
    return from_matrix(np.frombuffer(bytes(side), dtype="<i4")[:9])


def from_matrix(matrix: np.ndarray) -> Orientation:
    """``(a, b, c, d)`` of a display matrix (9 int32, 16.16 fixed point); :data:`UPRIGHT` unless it is one of
    the eight right-angle rotations and mirrors."""
    if matrix.shape != (9,):
        return UPRIGHT
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    # Scale does not matter for which way up (FFmpeg's autorotate ignores it too): normalise it away.
    sx, sy = float(np.hypot(a, c)), float(np.hypot(b, d))
    if sx == 0 or sy == 0:
        return UPRIGHT
    a, b, c, d = a / sx, b / sy, c / sx, d / sy
    sa, sb, sc, sd = (round(v) for v in (a, b, c, d))
    exact = all(abs(v - s) < 1e-3 for v, s in zip((a, b, c, d), (sa, sb, sc, sd), strict=True))
    straight = sb == sc == 0 and abs(sa) == abs(sd) == 1
    turned = sa == sd == 0 and abs(sb) == abs(sc) == 1
    if not exact or not (straight or turned):
        log.debug("display matrix %s is not a right-angle turn; left as decoded", matrix.tolist())
        return UPRIGHT
    return (sa, sb, sc, sd)


def upright(image: np.ndarray, orient: Orientation) -> np.ndarray:
    """``image`` (rows, columns, channels) as displayed under ``orient``: a view, no copy."""
    a, b, c, d = orient
    if a == 0:  # the screen's columns are the source's rows: transpose, then mirror as the signs say
        return image.transpose(1, 0, 2)[::b, ::c]
    return image[::d, ::a]


def to_rgb(
    frame: av.VideoFrame,
    orient: Orientation = UPRIGHT,
    max_side: int = MAX_SIDE,
    reformatter: VideoReformatter | None = None,
) -> np.ndarray:
    """``frame`` as an RGB array (rows, columns, 3) shown under ``orient``, its longer side at most
    ``max_side``.

    Scaling happens in the conversion, on the decoded orientation; turning afterwards gives the same
    picture (a right-angle turn keeps the longer side) and moves 4x fewer pixels at 1080p.

    Pass a stream's own ``reformatter`` to reuse its scaling context from frame to frame (PyAV's
    ``frame.to_ndarray`` makes a new one per frame). Scaling runs in the calling thread: one reader
    thread per camera already spreads the work over the cores, and swscale's own slice threads were
    started and joined for every frame (measured in bench/ingest.py ``cpu``).
    """
    scale = min(1.0, max_side / max(frame.width, frame.height))
    w, h = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
    scaler = reformatter if reformatter is not None else VideoReformatter()
    image = scaler.reformat(frame, width=w, height=h, format="rgb24", threads=1).to_ndarray()
    if orient == UPRIGHT:
        return image
    # Contiguous again: downstream code (and torch.from_numpy) expects no negative strides.
    return np.ascontiguousarray(upright(image, orient))


class Orienter:
    """One stream's (one connection's) display orientation: the last display matrix seen, applied to every
    picture until another one comes; and the stream's scaling context, reused from picture to picture.
    Used by one thread (the stream's reader)."""

    def __init__(self) -> None:
        self.current: Orientation = UPRIGHT
        self._reformatter = VideoReformatter()

    def picture(self, frame: av.VideoFrame, max_side: int = MAX_SIDE) -> np.ndarray:
        """``frame`` as :func:`to_rgb` makes it, upright by the stream's latest display matrix (``frame``'s
        own included)."""
        self.update(frame)
        return self.rgb(frame, max_side)

    def rgb(self, frame: av.VideoFrame, max_side: int = MAX_SIDE) -> np.ndarray:
        """``frame`` as :func:`to_rgb` makes it, upright by the display matrix seen last (call
        :meth:`update` with ``frame`` first)."""
        return to_rgb(frame, self.current, max_side, self._reformatter)

    def update(self, frame: av.VideoFrame) -> None:
        """Take note of ``frame``'s display matrix, if it has one (call it for frames not converted too:
        the SEI may come on a frame the sampler skips)."""
        found = orientation(frame)
        if found is not None:
            self.current = found
