"""stream/source.py: what every threaded source guarantees."""

from __future__ import annotations

import numpy as np

from stream.source import ThreadedSource
from tests.media import collect


class RestartingClock(ThreadedSource):
    """A source whose clock restarts: stream times 0..2.5 twice, as a looping file or a rebooted camera gives."""

    def _run(self) -> None:
        for t in [i / 2 for i in range(6)] * 2:
            if self._sampler.due(t):
                self._emit(t, np.zeros((4, 4, 3), np.uint8))


async def test_stream_time_never_goes_backwards_when_a_source_clock_jumps_back() -> None:
    src = RestartingClock("r", "restarting", fps=2.0, lossless=True)
    pts = [f.pts for f in await collect(src)]
    assert pts == [i / 2 for i in range(12)]
