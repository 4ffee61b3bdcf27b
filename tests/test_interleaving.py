"""The engine steps answers one token at a time between other work: two long answers go on side by side (a
step each, decoded as one batch), frames keep reaching memory while they do, and with one answer at a time
the same questions run one after the other (the control)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from engine.engine import Engine, EngineSettings, Question
from engine.events import FINAL, Answered, QuestionEvent, Token
from errors import ConfigError
from livesight.cli import build_parser
from livesight.config import load_serve_config
from models.families.smolvlm import SmolVLMAdapter
from stream.spec import parse_source
from tests.support.server import TOKEN, source_factory, until


@pytest.fixture
def talkative(tiny: SmolVLMAdapter) -> Iterator[SmolVLMAdapter]:
    """The tiny model, never stopping before its token limit (random weights may stop at once)."""
    stops = tiny.stop_token_ids
    tiny.stop_token_ids = frozenset()
    yield tiny
    tiny.stop_token_ids = stops


async def two_long_answers(engine: Engine) -> tuple[list[str], int, list[Answered]]:
    """Token order (question ids) of two 300-token answers asked at once, frames ingested meanwhile."""
    order: list[str] = []
    finals: list[Answered] = []
    done = asyncio.Event()

    def reply(ev: QuestionEvent) -> None:
        if isinstance(ev, Token):
            order.append(ev.question)
        if isinstance(ev, FINAL):
            assert isinstance(ev, Answered), ev
            finals.append(ev)
            if len(finals) == 2:
                done.set()

    frames = sum(s.frames for s in engine.streams_info())
    for qid, stream in (("one", "a"), ("two", "b")):
        engine.submit(Question(qid, stream, "Tell me everything.", 300, None, reply, time.time(), owner=qid))
    await asyncio.wait_for(done.wait(), 120)
    return order, sum(s.frames for s in engine.streams_info()) - frames, finals


async def test_long_answers_go_on_side_by_side_while_frames_keep_coming(talkative: SmolVLMAdapter) -> None:
    engine = Engine(talkative, EngineSettings(fps=8.0), source_factory())
    await engine.start([parse_source("a=demo"), parse_source("b=demo")])
    try:
        await until(lambda: min(s.frames for s in engine.streams_info()) >= 2, 30, "first frames")
        order, frames, finals = await two_long_answers(engine)
    finally:
        await engine.close()
    # (Pieces, not tokens: a random model's tokens often end mid-character, so pieces are fewer and vary.)
    assert order.count("one") >= 3 and order.count("two") >= 3
    # Side by side: "two" has pieces before "one" ends (not all after it), and vice versa.
    last_one = len(order) - 1 - order[::-1].index("one")
    last_two = len(order) - 1 - order[::-1].index("two")
    assert order[: min(last_one, last_two)].count("one") >= 2 and order[: min(last_one, last_two)].count("two") >= 2
    assert frames > 0  # the cameras were not held up for the length of an answer
    assert all(f.context.completion_tokens == 300 for f in finals)


async def test_one_answer_at_a_time_runs_them_one_after_the_other(talkative: SmolVLMAdapter) -> None:
    engine = Engine(talkative, EngineSettings(fps=8.0, max_active=1), source_factory())
    await engine.start([parse_source("a=demo"), parse_source("b=demo")])
    try:
        await until(lambda: min(s.frames for s in engine.streams_info()) >= 2, 30, "first frames")
        order, _, _ = await two_long_answers(engine)
    finally:
        await engine.close()
    first = order[0]
    switch = next(i for i, q in enumerate(order) if q != first)
    assert all(q != first for q in order[switch:])  # the second began only after the first had finished


def test_answers_at_once_is_a_setting() -> None:
    assert load_serve_config({"token": TOKEN, "max_active": 8}).max_active == 8
    assert load_serve_config({"token": TOKEN}).max_active == 4
    with pytest.raises(ConfigError, match="max_active"):
        load_serve_config({"token": TOKEN, "max_active": 0})
    args = build_parser().parse_args(["serve", "--max-answers", "2"])
    assert args.max_answers == 2


async def test_an_address_with_nothing_under_way_is_not_kept_waiting_by_anothers_long_answers(
    talkative: SmolVLMAdapter,
) -> None:
    engine = Engine(talkative, EngineSettings(fps=2.0, max_active=1), source_factory())
    await engine.start([parse_source("demo")])
    events: list[tuple[str, str]] = []  # (question, "token" | "end") in order
    ended: dict[str, asyncio.Event] = {q: asyncio.Event() for q in ("hog1", "hog2", "polite")}

    def ask(qid: str, group: str, tokens: int) -> None:
        def reply(ev: QuestionEvent) -> None:
            if isinstance(ev, Token):
                events.append((qid, "token"))
            if isinstance(ev, FINAL):
                assert isinstance(ev, Answered), ev
                events.append((qid, "end"))
                ended[qid].set()

        engine.submit(Question(qid, "demo", "Tell me.", tokens, None, reply, time.time(), owner=qid, group=group))

    try:
        await until(lambda: engine.stream_info("demo").frames >= 1, 30, "first frames")
        ask("hog1", "10.0.0.3", 300)
        await until(lambda: ("hog1", "token") in events, 30, "the long answer under way")
        ask("hog2", "10.0.0.3", 4)  # the same address: waits for the one place
        ask("polite", "10.0.0.1", 4)  # another address, nothing under way: answered beside it
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ended.values())), 120)
    finally:
        await engine.close()
    ends = [q for q, what in events if what == "end"]
    assert ends.index("polite") < ends.index("hog1"), ends  # not kept waiting by the long answer
    assert ends.index("hog2") > ends.index("hog1"), ends  # its own address's answer held the place
    first_hog2 = events.index(("hog2", "token"))
    assert first_hog2 > events.index(("hog1", "end")), "hog2 began before hog1 ended: max_active ignored"
