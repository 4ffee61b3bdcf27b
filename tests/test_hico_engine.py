"""The engine keeps each stream in a HiCo memory and reports its tiers and the context an answer used."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from engine.engine import Engine, EngineSettings, Question
from engine.events import FINAL, Answered, QuestionEvent
from errors import ConfigError
from models.families.smolvlm import SmolVLMAdapter
from stream.spec import parse_source
from tests.support.server import source_factory, until


async def test_streams_report_tiers_and_answers_report_their_context(tiny: SmolVLMAdapter) -> None:
    engine = Engine(tiny, EngineSettings(fps=4.0, budget=480), source_factory(lossless=True))
    await engine.start([parse_source("demo")])
    try:
        # The engine has no event for "memory changed": poll. The default layout holds an hour in 6 tiers;
        # the first three fill within a minute of stream.
        def tier3() -> int:
            tiers = engine.streams_info()[0].memory_tiers
            return tiers[3].frames if len(tiers) > 3 else 0

        await until(lambda: tier3() > 0, 60, "segments in tier 3")
        info = engine.streams_info()[0]
        tiers = info.memory_tiers
        assert [t.tier for t in tiers] == list(range(len(engine.memory_settings.tiers) + 1))
        assert [t.tokens_per_frame for t in tiers[1:4]] == [16, 4, 1]
        assert sum(t.tokens for t in tiers) == info.memory_tokens <= 480
        spans = [t.span for t in reversed(tiers) if t.frames]  # oldest tier first, disjoint, in time order
        assert len(spans) >= 3
        assert all(a is not None and b is not None and a[1] < b[0] for a, b in itertools.pairwise(spans))

        got: list[QuestionEvent] = []
        done = asyncio.Event()

        def reply(ev: QuestionEvent) -> None:
            got.append(ev)
            if isinstance(ev, FINAL):
                done.set()

        for guided in (None, "attention"):
            done.clear()
            engine.submit(Question("q1", "demo", "what happened?", 4, None, reply, time.time(), guided=guided))
            async with asyncio.timeout(30):
                await done.wait()
            answer = got[-1]
            assert isinstance(answer, Answered), answer
            ctx = answer.context
            assert ctx.guided == guided
            assert 0 < ctx.visual_tokens <= 480
            assert ctx.visual_tokens < ctx.tokens  # prompt text comes on top of visual tokens
            assert ctx.start is not None and ctx.end is not None and ctx.start < ctx.end
            assert ctx.frames >= 8
    finally:
        await engine.close()


def test_a_budget_too_small_for_one_tier_is_a_config_error(tiny: SmolVLMAdapter) -> None:
    with pytest.raises(ConfigError, match="too small"):
        Engine(tiny, EngineSettings(budget=15), source_factory())  # a clip is 16 tokens
