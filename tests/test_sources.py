"""The demo scene and file sources, on real PyAV decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livesight.errors import SourceError
from stream.demo import EVENTS, DemoSource, events_at, render
from stream.file import FileSource
from stream.frame import Frame
from stream.source import Source, SourceState, ThreadedSource
from tests.media import write_video


async def collect(source: Source) -> list[Frame]:
    out = [f async for f in source]
    await source.close()
    return out


def test_demo_scene_is_deterministic_and_shows_its_scripted_events() -> None:
    assert np.array_equal(render(12.3), render(12.3))
    assert [e.description for e in events_at(15.0)] == [EVENTS[0].description]
    assert events_at(75.0) == events_at(15.0)  # the script repeats every minute
    star_region = (slice(40, 100), slice(510, 580))
    yellow = np.array([250, 220, 0])

    def has_star(img: np.ndarray) -> bool:
        return bool((np.abs(img[star_region].astype(int) - yellow).sum(-1) < 30).any())

    assert has_star(render(15.0)) and not has_star(render(5.0))
    assert render(35.0).mean() < render(25.0).mean() - 40  # lights off


async def test_demo_source_fast_yields_every_sampled_frame_then_ends() -> None:
    src = DemoSource("demo", fps=2.0, realtime=False, duration=10.0)
    frames = await collect(src)
    assert [f.pts for f in frames] == pytest.approx([i / 2 for i in range(20)])
    assert [f.index for f in frames] == list(range(20))
    assert src.stats.state is SourceState.ENDED and src.stats.dropped == 0
    assert frames[0].image.shape == (360, 640, 3)


async def test_file_source_samples_by_presentation_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "grey.mp4", seconds=6, fps=10)
    src = FileSource("f", str(path), fps=2.0, realtime=False)
    frames = await collect(src)
    assert [round(f.pts, 2) for f in frames] == [i / 2 for i in range(12)]
    # frame at pts p is source frame 10p, whose grey level is (10 * 10p) % 250
    levels = [int(f.image.mean()) for f in frames]
    expected = [(100 * i // 2) % 250 for i in range(12)]
    assert all(abs(a - b) <= 6 for a, b in zip(levels, expected, strict=True)), (levels, expected)
    assert src.stats.state is SourceState.ENDED
    assert src.display_url == "grey.mp4"


async def test_a_file_that_is_not_video_fails_with_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01not a video at all" * 100)
    src = FileSource("bad", str(bad), fps=1.0, realtime=False)
    with pytest.raises(SourceError) as err:
        await collect(src)
    assert err.value.retryable is False and "bad.mp4" in err.value.message
    assert src.stats.state is SourceState.OFFLINE


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
