"""A video file replayed at its real pace (default) or as fast as the consumer takes frames, shown upright
(its display matrix applied, see :mod:`stream.picture`)."""

from __future__ import annotations

import os
import time

import av
import av.error

from errors import SourceError
from stream.picture import MAX_SIDE, Orienter
from stream.source import SourceState, ThreadedSource

__all__ = ["MAX_SIDE", "FileSource"]


class FileSource(ThreadedSource):
    """Any container PyAV reads, at its real pace or ``lossless`` (as fast as the consumer takes frames).
    Ends (state ``ended``) at the end of the file."""

    def __init__(self, name: str, path: str, fps: float, *, lossless: bool = False) -> None:
        super().__init__(name, os.path.basename(path), fps, lossless=lossless)
        self._path = path

    def _run(self) -> None:
        try:
            container = av.open(self._path, mode="r")
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise SourceError(f"cannot open {self.display_url!r}: {exc.strerror}", retryable=False) from exc
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot read {self.display_url!r} as video: {exc}", retryable=False) from exc
        with container:
            if not container.streams.video:
                raise SourceError(f"{self.display_url!r} has no video stream", retryable=False)
            vstream = container.streams.video[0]
            vstream.thread_type = "AUTO"
            rate = float(vstream.average_rate) if vstream.average_rate else 30.0
            self.stats.state = SourceState.LIVE
            start = time.monotonic()
            first: float | None = None
            orienter = Orienter()
            try:
                for n, frame in enumerate(container.decode(vstream)):
                    if self._stop.is_set():
                        return
                    orienter.update(frame)
                    t = float(frame.time) if frame.time is not None else n / rate
                    first = t if first is None else first
                    pts = t - first
                    if not self._sampler.due(pts):
                        continue
                    if not self.lossless and not self._sleep(start + pts - time.monotonic()):
                        return
                    self._emit(pts, orienter.picture(frame))
            except av.error.FFmpegError as exc:
                raise SourceError(f"decoding {self.display_url!r} failed: {exc}", retryable=False) from exc
