"""A built-in generated scene, the default source: runs with no camera and no input file.

The scene is deterministic in stream time: moving coloured shapes, a visible clock, and scripted events
at known times (see :data:`EVENTS`), so tests and demos can ask about things that really happened.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from stream.source import SourceState, ThreadedSource

WIDTH, HEIGHT = 640, 360
NATIVE_FPS = 10.0
CYCLE_S = 60.0


@dataclass(frozen=True)
class Event:
    start: float  # seconds into each 60 s cycle
    end: float
    description: str


#: What happens in every 60-second cycle of the demo scene.
EVENTS: tuple[Event, ...] = (
    Event(10.0, 20.0, "a yellow star appears in the top right corner"),
    Event(30.0, 40.0, "the lights go off: the background turns dark"),
    Event(45.0, 55.0, "a red banner reads PERSON AT DOOR"),
)


def events_at(t: float) -> list[Event]:
    """The scripted events visible at stream time ``t`` seconds."""
    c = t % CYCLE_S
    return [e for e in EVENTS if e.start <= c < e.end]


def render(t: float, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The scene at stream time ``t`` seconds: ``[height, width, 3]`` uint8 RGB."""
    active = {e.description for e in events_at(t)}
    dark = EVENTS[1].description in active
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    base = np.array([40, 60, 90] if dark else [150, 190, 230], dtype=np.float32)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = (base * (1.0 - 0.35 * y))[:, None, :].astype(np.uint8)
    cv2.rectangle(img, (0, int(height * 0.8)), (width, height), (60, 140, 60), -1)  # grass

    # A red ball bouncing left to right, a green square gliding, a blue triangle turning.
    bx = int((0.5 + 0.4 * math.sin(t * 0.7)) * width)
    by = int(height * 0.8 - 20 - abs(math.sin(t * 2.0)) * height * 0.45)
    cv2.circle(img, (bx, by), 20, (220, 30, 30), -1)
    sx = int((t * 40.0) % (width + 60)) - 60
    cv2.rectangle(img, (sx, int(height * 0.62)), (sx + 50, int(height * 0.62) + 50), (30, 180, 60), -1)
    cx, cy, r = int(width * 0.2), int(height * 0.35), 35
    pts = [(cx + int(r * math.cos(t + k * 2.0944)), cy + int(r * math.sin(t + k * 2.0944))) for k in range(3)]
    cv2.fillPoly(img, [np.array(pts, dtype=np.int32)], (40, 70, 220))

    if EVENTS[0].description in active:
        _star(img, (int(width * 0.85), int(height * 0.2)), 30, (250, 220, 0))
    if EVENTS[2].description in active:
        cv2.rectangle(img, (0, int(height * 0.42)), (width, int(height * 0.56)), (200, 0, 0), -1)
        cv2.putText(
            img,
            "PERSON AT DOOR",
            (int(width * 0.22), int(height * 0.52)),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.2,
            (255, 255, 255),
            3,
            cv2.LINE_AA,
        )

    h, m, s = int(t // 3600), int(t // 60) % 60, t % 60
    cv2.rectangle(img, (8, 8), (230, 44), (0, 0, 0), -1)
    cv2.putText(
        img, f"{h:02d}:{m:02d}:{s:04.1f}", (16, 36), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA
    )
    return img


def _star(img: np.ndarray, center: tuple[int, int], r: int, color: tuple[int, int, int]) -> None:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((center[0] + int(rad * math.cos(a)), center[1] + int(rad * math.sin(a))))
    cv2.fillPoly(img, [np.array(pts, dtype=np.int32)], color)


class DemoSource(ThreadedSource):
    """The generated scene, paced at real time, or ``lossless``: as fast as the consumer takes frames.

    Only frames the sampler keeps are drawn. ``duration`` (seconds of stream time) ends the source;
    None runs forever.
    """

    def __init__(self, name: str, fps: float, *, lossless: bool = False, duration: float | None = None) -> None:
        super().__init__(name, "demo", fps, lossless=lossless)
        self.wall_clock = not lossless  # at real pace the scene is live; read as fast as possible, a recording
        self._duration = duration

    def _run(self) -> None:
        start = time.monotonic()
        self.stats.state = SourceState.LIVE
        n = 0
        while not self._stop.is_set():
            pts = n / NATIVE_FPS
            n += 1
            if self._duration is not None and pts >= self._duration:
                return
            if not self._sampler.due(pts):
                continue
            if not self.lossless and not self._sleep(start + pts - time.monotonic()):
                return
            self._emit(pts, render(pts))
