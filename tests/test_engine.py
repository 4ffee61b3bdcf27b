"""The engine with the tiny real model: the frame path into memory, under the budget."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import torch

import engine.inference as inference_mod
from engine.engine import Engine, EngineSettings, Question
from engine.events import Answered, Cancelled, Failed, QuestionEvent, StreamInfo
from engine.observer import Work
from errors import ConfigError, UnknownStream
from memory import HiCoMemory, Segment
from models.adapter import Turn
from models.families.smolvlm import SmolVLMAdapter
from stream.spec import parse_source
from tests.media import write_video
from tests.support.server import source_factory, until


class WatchedMemory(HiCoMemory):
    """The real memory, recording the most tokens it ever held."""

    peak = 0

    def add_frame(
        self,
        tokens: torch.Tensor,
        t: float,
        extras: dict[str, torch.Tensor] | None = None,
        *,
        wall: float | None = None,
    ) -> Segment | None:
        clip = super().add_frame(tokens, t, extras, wall=wall)
        WatchedMemory.peak = max(WatchedMemory.peak, self.stats().tokens)
        return clip


async def until_ingested(engine: Engine, name: str, frames: int, timeout: float = 180.0) -> StreamInfo:
    def info() -> StreamInfo:
        return {s.name: s for s in engine.streams_info()}[name]

    await until(lambda: info().state == "ended" and info().frames == frames, timeout, f"{frames} frames ingested")
    return info()


async def test_memory_never_exceeds_its_budget_over_a_long_fast_run(
    tiny: SmolVLMAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference_mod, "HiCoMemory", WatchedMemory)
    WatchedMemory.peak = 0
    video = write_video(tmp_path / "long.mp4", seconds=300, fps=2, size=(64, 48))
    budget = 32 * tiny.tokens_per_frame
    engine = Engine(tiny, EngineSettings(fps=1.0, budget=budget), source_factory(lossless=True))
    await engine.start([parse_source(f"long={video}")])
    try:
        info = await until_ingested(engine, "long", 300)
    finally:
        await engine.close()
    assert info.frames == 300 and info.dropped == 0  # lossless when reading as fast as possible
    assert budget // 2 <= WatchedMemory.peak <= budget  # it filled up, and never went over
    assert 0 < info.memory_tokens <= budget


async def test_two_streams_share_one_worker_and_both_fill_memory(tiny: SmolVLMAdapter) -> None:
    engine = Engine(tiny, EngineSettings(fps=5.0), source_factory())
    await engine.start([parse_source("a=demo"), parse_source("b=demo")])
    try:
        await until(lambda: min(s.frames for s in engine.streams_info()) >= 5, 60, "5 frames on each stream")
        for s in engine.streams_info():
            assert s.state == "live" and s.memory_tokens >= 5 * tiny.tokens_per_frame
            assert s.last_frame_age_s is not None and s.last_frame_age_s >= 0
    finally:
        await engine.close()
    assert all(t.get_name() != "inference-worker" for t in asyncio.all_tasks())


def test_a_budget_smaller_than_one_frame_is_refused(tiny: SmolVLMAdapter) -> None:
    with pytest.raises(ConfigError, match="too small"):
        Engine(tiny, EngineSettings(budget=tiny.tokens_per_frame - 1), source_factory())


class RecordingObserver:
    """An :class:`~engine.observer.EngineObserver` that writes down every call."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.finished: list[Answered | Cancelled | Failed] = []
        self.work: list[Work | None] = []  # busy with what; None: idle

    def frame_ingested(self, stream: str, lag_s: float) -> None:
        self.lags.append(lag_s)

    def question_finished(self, event: Answered | Cancelled | Failed) -> None:
        self.finished.append(event)

    def worker_busy(self, work: Work) -> None:
        self.work.append(work)

    def worker_idle(self) -> None:
        self.work.append(None)

    def evaluation_finished(self, stream: str, seconds: float, *, ok: bool) -> None:
        pass

    def evaluation_dropped(self, stream: str) -> None:
        pass

    def alert_fired(self, stream: str) -> None:
        pass


async def test_the_engine_reports_to_its_observer(tiny: SmolVLMAdapter) -> None:
    """Frames with their lag, every question's end (refusals at submission too), and busy/idle in pairs;
    a question's own turns are used instead of the session store's."""
    seen = RecordingObserver()
    engine = Engine(tiny, EngineSettings(fps=5.0), source_factory(), observer=seen)
    await engine.start([parse_source("a=demo")])
    events: list[QuestionEvent] = []

    async def answer(qid: str, turns: tuple[Turn, ...] | None) -> Answered:
        engine.submit(Question(qid, "a", "Hi?", 4, None, events.append, time.time(), turns=turns))
        await until(lambda: any(isinstance(e, Answered) and e.question == qid for e in events), 60, "the answer")
        return next(e for e in events if isinstance(e, Answered) and e.question == qid)

    try:
        with pytest.raises(UnknownStream):
            engine.submit(Question("q0", "nope", "Hi?", 4, None, events.append, time.time()))
        await until(lambda: bool(seen.lags), 60, "a frame")
        alone = await answer("q1", None)
        after = await answer("q2", (Turn("Is it red?", "No, it is blue."),))
    finally:
        await engine.close()
    assert [type(e) for e in seen.finished] == [Failed, Answered, Answered]
    assert isinstance(seen.finished[0], Failed) and isinstance(seen.finished[0].error, UnknownStream)
    assert all(0 <= lag < 30 for lag in seen.lags)
    assert seen.work[0] in ("answer", "ingest") and "answer" in seen.work
    assert all((a is None) != (b is None) for a, b in itertools.pairwise(seen.work))  # busy, idle, busy, ...

    def suffix(a: Answered) -> int:
        assert a.context.prompt_tokens is not None
        return a.context.prompt_tokens - a.context.tokens

    assert suffix(after) > suffix(alone) + 5  # the given turn reached the model
