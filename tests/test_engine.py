"""The engine with the tiny real model: the frame path into memory, under the budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

import engine.inference as inference_mod
from engine.engine import Engine, EngineSettings
from engine.events import StreamInfo
from errors import ConfigError
from memory import HiCoMemory, Segment
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
