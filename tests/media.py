"""Test media made in code with PyAV (no downloads)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from stream.frame import Frame
from stream.source import Source


def write_video(path: Path, seconds: float, fps: int = 10, size: tuple[int, int] = (160, 120)) -> Path:
    """An MPEG-4 file whose frame i is a flat grey of level (10 * i) % 250, so tests can tell frames apart."""
    w, h = size
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((h, w, 3), (10 * i) % 250, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


async def collect(source: Source) -> list[Frame]:
    """Every frame a source yields until it ends; the source is closed afterwards."""
    out = [f async for f in source]
    await source.close()
    return out
