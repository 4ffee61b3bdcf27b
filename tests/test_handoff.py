"""stream/handoff.py and stream/frame.py: the bounded hand-off of frames from a reader thread, and the frame itself."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from stream.frame import Frame
from stream.handoff import ThreadSlot


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
