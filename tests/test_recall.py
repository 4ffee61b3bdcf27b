"""Recall at question time, through the real engine, archive and tiny model: time words pick a window of a live
stream's archived clips, otherwise the content decides; recalled clips go after the cached prefix, within
their budget, never ones the memory holds at clip detail; "off" and explicit windows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.engine import Engine, EngineSettings
from engine.recall import OFF, RecallRequest
from models.families.smolvlm import SmolVLMAdapter
from store.archive import Archive
from stream.spec import SourceSpec
from tests.support.recorded import RecordedCamera, ask
from tests.support.server import until

TZ = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 12, 1, 14, 0, 0, tzinfo=TZ).timestamp()  # the camera started at 14:00:00
SECONDS = 600  # ten minutes of video at 1 fps


@pytest.fixture
async def engine(tiny: SmolVLMAdapter, tmp_path: Path) -> AsyncIterator[Engine]:
    archive = Archive(tmp_path, model="tiny")
    archive.start()
    now = T0 + SECONDS  # 14:10:00
    settings = EngineSettings(fps=1.0, timezone=TZ, recall_tokens=64)
    engine = Engine(
        tiny,
        settings,
        lambda spec, fps: RecordedCamera(spec.name, fps, seconds=SECONDS, t0=T0, size=(128, 72)),
        clock=lambda: now,
        archive=archive,
    )
    await engine.start([SourceSpec("cam", "rtsp", "rtsp://cam")])
    try:
        await until(lambda: engine.streams_info()[0].frames == SECONDS, 120, "ten minutes ingested")
        await until(lambda: archive.summary("cam").clips >= SECONDS - 3, 60, "every clip archived")
        yield engine
    finally:
        await engine.close()
        await asyncio.to_thread(archive.close)


def clock(t: str) -> float:
    return datetime.fromisoformat(t).timestamp()


async def test_time_words_recall_the_clips_of_that_moment(engine: Engine) -> None:
    info = engine.streams_info()[0]
    assert info.memory_clock_span is not None and info.archive is not None
    answer = await ask(engine, "What happened at 14:03:20?")
    ctx = answer.context
    assert ctx.recall == "time" and ctx.recalled
    assert ctx.clock_end is not None and ctx.clock_end.startswith("2026-12-01T14:09:5")  # the memory's end
    for span in ctx.recalled:  # within a minute of 14:03:20 (the window +-1 min)
        assert span.clock_start is not None and span.clock_end is not None
        assert clock("2026-12-01T14:02:19+01:00") <= clock(span.clock_start)
        assert clock(span.clock_end) <= clock("2026-12-01T14:04:21+01:00")
    assert len(ctx.recalled) <= 64 // 16  # the budget: 64 tokens of 16-token clips
    assert [s.start for s in ctx.recalled] == sorted(s.start for s in ctx.recalled)  # in time order
    # The window holds far more clips than the budget: a moment named to the second gets the ones nearest
    # it, so what was on screen then is among them (not clips anywhere in the two minutes).
    named = clock("2026-12-01T14:03:20+01:00")
    spans = [(clock(s.clock_start), clock(s.clock_end)) for s in ctx.recalled if s.clock_start and s.clock_end]
    assert any(a <= named <= b for a, b in spans), spans
    assert all(abs((a + b) / 2 - named) <= 16 for a, b in spans), spans


async def test_without_time_words_the_content_decides_among_older_clips(engine: Engine) -> None:
    answer = await ask(engine, "Was there a red banner?")
    ctx = answer.context
    assert ctx.recall == "content" and 0 < len(ctx.recalled) <= 4
    detailed = [t for t in engine.streams_info()[0].memory_tiers if t.tier <= 1 and t.span is not None]
    oldest_detail = min(t.span[0] for t in detailed if t.span is not None)
    assert all(s.end < oldest_detail for s in ctx.recalled)  # never what the memory holds at clip detail


async def test_recall_off_and_an_explicit_window(engine: Engine) -> None:
    assert (await ask(engine, "What happened at 14:03:20?", recall=OFF)).context.recalled == ()
    window = RecallRequest("window", wall=(T0 + 60, T0 + 63))
    ctx = (await ask(engine, "What was going on?", recall=window)).context
    assert ctx.recall == "time"
    assert [(s.start, s.end) for s in ctx.recalled] == [(60.0, 60.0), (61.0, 61.0), (62.0, 62.0), (63.0, 63.0)]
    by_stream_time = RecallRequest("window", stream_time=(100.0, 101.0))
    ctx = (await ask(engine, "What was going on?", recall=by_stream_time)).context
    assert [s.start for s in ctx.recalled] == [100.0, 101.0]
