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
        # The engine has no event for "memory changed": poll.
        await until(lambda: engine.streams_info()[0].long_term > 0, 60, "a segment in long-term memory")
        info = engine.streams_info()[0]
        tiers = info.memory_tiers
        assert [t.tier for t in tiers] == [0, 1, 2, 3]
        assert sum(t.tokens for t in tiers) == info.memory_tokens <= 480
        assert all(t.frames > 0 for t in tiers)
        spans = [t.span for t in reversed(tiers)]  # oldest tier first, disjoint, in time order
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
            assert 0 < ctx.visual_tokens <= 480 < ctx.tokens  # prompt text comes on top of visual tokens
            assert ctx.start is not None and ctx.end is not None and ctx.start < ctx.end
            assert ctx.frames >= 8
    finally:
        await engine.close()


def test_a_budget_too_small_for_one_tier_is_a_config_error(tiny: SmolVLMAdapter) -> None:
    with pytest.raises(ConfigError, match="too small"):
        Engine(tiny, EngineSettings(budget=64), source_factory())
