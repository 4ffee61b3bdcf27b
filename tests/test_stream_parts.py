"""The frame path's small parts: sampling, hand-off, spec parsing and credential redaction."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from livesight.errors import ConfigError
from stream.frame import Frame
from stream.handoff import ThreadSlot
from stream.sampler import Sampler
from stream.spec import parse_source, redact


def test_sampler_keeps_one_frame_per_period_from_a_30fps_source() -> None:
    s = Sampler(1.0)
    kept = [n / 30 for n in range(30 * 10) if s.due(n / 30)]
    assert len(kept) == 10
    assert kept[:3] == pytest.approx([0.0, 1.0, 2.0], abs=1 / 30)


def test_sampler_skips_missed_slots_and_restarts_after_a_clock_jump_back() -> None:
    s = Sampler(2.0)
    assert s.due(0.0) and not s.due(0.2) and s.due(0.5)
    assert s.due(10.0) and not s.due(10.1) and s.due(10.5)  # a gap: no burst of catch-up frames
    assert s.due(3.0)  # the camera restarted its clock


def test_sampler_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Sampler(0)


def _frame(i: int) -> Frame:
    return Frame("s", i, float(i), 0.0, np.zeros((2, 2, 3), np.uint8))


async def test_thread_slot_newest_wins_and_counts_drops() -> None:
    slot = ThreadSlot(capacity=1)
    slot.bind(asyncio.get_running_loop())
    drops = [slot.put(_frame(i)) for i in range(5)]
    assert drops == [False, True, True, True, True]
    got = await slot.get()
    assert got is not None and got.index == 4
    slot.close()
    assert await slot.get() is None


async def test_lossless_thread_slot_makes_the_producer_wait() -> None:
    slot = ThreadSlot(capacity=1, lossless=True)
    slot.bind(asyncio.get_running_loop())
    produced: list[int] = []

    def producer() -> None:
        for i in range(20):
            slot.put(_frame(i))
            produced.append(i)
        slot.close()

    t = threading.Thread(target=producer, name="test-producer")
    t.start()
    got = []
    while (frame := await slot.get()) is not None:
        got.append(frame.index)
    t.join()
    assert got == list(range(20))


def test_frame_is_read_only_rgb() -> None:
    f = _frame(0)
    assert not f.image.flags.writeable
    with pytest.raises(ValueError, match="uint8 RGB"):
        Frame("s", 0, 0.0, 0.0, np.zeros((2, 2), np.uint8))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://cam.local/live?user=bob&password=hunter2", "rtsp://cam.local/live?user=***&password=***"),
        ("https://h/x?token=abc&sig=def&q=1", "https://h/x?token=***&sig=***&q=1"),
        ("/videos/a.mp4", "/videos/a.mp4"),
        ("demo", "demo"),
    ],
)
def test_redact_removes_credentials(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "hunter2" not in redact(url)


def test_parse_source_names_and_kinds(tmp_path: object) -> None:
    assert parse_source("demo").name == "demo"
    assert parse_source("lobby=demo").name == "lobby"
    with pytest.raises(ConfigError, match="no such file"):
        parse_source("cam=/does/not/exist.mp4")
    with pytest.raises(ConfigError, match="invalid stream name"):
        parse_source("bad name=demo")
    with pytest.raises(ConfigError, match="unsupported scheme") as err:
        parse_source("x=gopher://u:secret@h/")
    assert "secret" not in str(err.value)
