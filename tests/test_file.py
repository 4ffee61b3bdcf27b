"""stream/file.py: video files on real PyAV decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from errors import SourceError
from stream.file import FileSource
from stream.source import SourceState
from tests.media import collect, write_video


async def test_file_source_samples_by_presentation_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "grey.mp4", seconds=6, fps=10)
    src = FileSource("f", str(path), fps=2.0, lossless=True)
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
    src = FileSource("bad", str(bad), fps=1.0, lossless=True)
    with pytest.raises(SourceError) as err:
        await collect(src)
    assert err.value.retryable is False and "bad.mp4" in err.value.message
    assert src.stats.state is SourceState.OFFLINE
