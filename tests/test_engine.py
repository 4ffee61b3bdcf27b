"""The engine with the tiny real model: the frame path into memory, under the budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

import livesight.engine as engine_mod
from livesight.engine import Engine, EngineSettings
from livesight.errors import ConfigError
from memory import HiCoMemory
from models.smolvlm import SmolVLMAdapter
from stream.spec import parse_source
from tests.conftest import source_factory
from tests.media import write_video


class WatchedMemory(HiCoMemory):
    """The real memory, recording the most tokens it ever held."""

    peak = 0

    def add_frame(self, tokens: torch.Tensor, t: float, extras: dict[str, torch.Tensor] | None = None) -> None:
        super().add_frame(tokens, t, extras)
        WatchedMemory.peak = max(WatchedMemory.peak, self.stats().tokens)


async def until_ingested(engine: Engine, name: str, frames: int, timeout: float = 180.0) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            info = {s["name"]: s for s in engine.streams_info()}[name]
            if info["state"] == "ended" and info["frames"] == frames:
                return info
            await asyncio.sleep(0.05)


async def test_memory_never_exceeds_its_budget_over_a_long_fast_run(
    tiny: SmolVLMAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod, "HiCoMemory", WatchedMemory)
    WatchedMemory.peak = 0
    video = write_video(tmp_path / "long.mp4", seconds=300, fps=2, size=(64, 48))
    budget = 32 * tiny.tokens_per_frame
    engine = Engine(tiny, EngineSettings(fps=1.0, budget=budget, realtime=False), source_factory)
    await engine.start([parse_source(f"long={video}")])
    try:
        info = await until_ingested(engine, "long", 300)
    finally:
        await engine.close()
    assert info["frames"] == 300 and info["dropped"] == 0  # lossless when reading as fast as possible
    assert budget // 2 <= WatchedMemory.peak <= budget  # it filled up, and never went over
    assert isinstance(info["memory_tokens"], int) and 0 < info["memory_tokens"] <= budget


async def test_two_streams_share_one_worker_and_both_fill_memory(tiny: SmolVLMAdapter) -> None:
    engine = Engine(tiny, EngineSettings(fps=5.0), source_factory)
    await engine.start([parse_source("a=demo"), parse_source("b=demo")])
    try:
        async with asyncio.timeout(60):
            while min(s["frames"] for s in engine.streams_info()) < 5:
                await asyncio.sleep(0.05)
        for s in engine.streams_info():
            assert s["state"] == "live" and s["memory_tokens"] >= 5 * tiny.tokens_per_frame
            assert s["last_frame_age_s"] is not None and s["last_frame_age_s"] >= 0
    finally:
        await engine.close()
    assert all(t.get_name() != "inference-worker" for t in asyncio.all_tasks())


def test_a_budget_smaller_than_one_frame_is_refused(tiny: SmolVLMAdapter) -> None:
    with pytest.raises(ConfigError, match="too small"):
        Engine(tiny, EngineSettings(budget=tiny.tokens_per_frame - 1), source_factory)
