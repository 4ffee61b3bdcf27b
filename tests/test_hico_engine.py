"""The engine keeps each stream in a HiCo memory and reports its tiers and the context an answer used."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest

from livesight.engine import Engine, EngineSettings, Question
from livesight.errors import ConfigError
from models.smolvlm import SmolVLMAdapter, random_model, tiny_config, tiny_tokenizer
from stream.factory import make_source
from stream.spec import parse_source
from web.protocol import Ask, ProtocolError, parse


def tiny() -> SmolVLMAdapter:
    tok = tiny_tokenizer()
    return SmolVLMAdapter(random_model(tiny_config(tok), 0), tok, "tiny-random", default_budget=1024)


async def test_streams_report_tiers_and_answers_report_their_context() -> None:
    engine = Engine(
        tiny(),
        EngineSettings(fps=4.0, budget=480, realtime=False),
        lambda spec, fps, realtime: make_source(spec, fps, realtime=realtime),
    )
    await engine.start([parse_source("demo")])
    try:
        for _ in range(1200):  # the engine has no event for "memory changed": poll, up to 60 s
            if engine.streams_info()[0]["long_term"]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no segment reached long-term memory within 60 s")
        info = engine.streams_info()[0]
        tiers = info["memory_tiers"]
        assert [t["tier"] for t in tiers] == [0, 1, 2, 3]
        assert sum(t["tokens"] for t in tiers) == info["memory_tokens"] <= 480
        assert all(t["frames"] > 0 for t in tiers)
        spans = [t["span"] for t in reversed(tiers)]  # oldest tier first, disjoint, in time order
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))

        got: list[dict[str, Any]] = []
        done = asyncio.Event()

        def deliver(msg: dict[str, Any]) -> None:
            got.append(msg)
            if msg["type"] in ("answer", "error"):
                done.set()

        for guided in (None, "attention"):
            done.clear()
            engine.submit(Question("q1", "demo", "what happened?", 4, None, deliver, time.time(), guided=guided))
            async with asyncio.timeout(30):
                await done.wait()
            answer = got[-1]
            assert answer["type"] == "answer", answer
            ctx = answer["context"]
            assert ctx["guided"] == guided
            assert 0 < ctx["visual_tokens"] <= 480 < ctx["tokens"]  # prompt text comes on top of visual tokens
            assert ctx["start"] < ctx["end"]
            assert ctx["frames"] >= 8
    finally:
        await engine.close()


def test_a_budget_too_small_for_one_tier_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="too small"):
        Engine(tiny(), EngineSettings(budget=64), lambda spec, fps, realtime: make_source(spec, fps))


def test_ask_accepts_a_guided_mode_and_rejects_others() -> None:
    msg = parse(json.dumps({"type": "ask", "id": "a", "stream": "s", "question": "q", "guided": "attention"}))
    assert isinstance(msg, Ask)
    assert msg.guided == "attention"
    plain = parse(json.dumps({"type": "ask", "id": "a", "stream": "s", "question": "q"}))
    assert isinstance(plain, Ask)
    assert plain.guided is None
    with pytest.raises(ProtocolError, match="guided"):
        parse(json.dumps({"type": "ask", "id": "a", "stream": "s", "question": "q", "guided": "all"}))
