"""Watch evaluations share the one inference worker with ingest and questions: a question never waits behind
more than one evaluation, evaluations that come due while the worker is busy are dropped (newest wins) and
counted rather than queued, and a description yields to a user's question."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from engine.engine import Engine, EngineSettings, Question
from engine.events import FINAL, Answered, QuestionEvent
from engine.watches import WatchSpec
from models.adapter import Prefix, Turn
from models.context import Piece
from models.families.smolvlm import SmolVLMAdapter
from models.generation import Generation
from stream.spec import parse_source
from tests.support.server import source_factory, until

EVAL_S = 0.03


class Timed(SmolVLMAdapter):
    """The tiny adapter with slower evaluations, recording when each evaluation ran and each answer began
    (stepped answers begin with ``begin``, others with ``generate``)."""

    evals: list[tuple[float, float]]
    answers: dict[str, float]

    def yes_probability(self, prefix: Prefix, question: str) -> float:
        start = time.monotonic()
        time.sleep(EVAL_S)
        p = super().yes_probability(prefix, question)
        self.evals.append((start, time.monotonic()))
        return p

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
        *,
        recalled: Sequence[Any] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        self.answers.setdefault(question, time.monotonic())
        return super().generate(prefix, turns, question, max_new_tokens, cancel, recalled=recalled, detail=detail)

    def begin(
        self, prefix: Prefix, turns: Sequence[Turn], question: str, max_new_tokens: int, *, extra: Sequence[Piece] = ()
    ) -> Generation:
        self.answers.setdefault(question, time.monotonic())
        return super().begin(prefix, turns, question, max_new_tokens, extra=extra)


@pytest.fixture(scope="module")
def timed(tiny: SmolVLMAdapter) -> Timed:
    adapter = Timed(tiny.model, tiny.tokenizer, "tiny-random", default_budget=1024)
    adapter.evals, adapter.answers = [], {}
    return adapter


async def test_a_question_waits_behind_at_most_one_evaluation_and_late_evaluations_are_dropped(
    timed: Timed,
) -> None:
    engine = Engine(timed, EngineSettings(fps=2.0), source_factory(lossless=True))
    await engine.start([parse_source("demo")])
    try:
        await until(lambda: engine.stream_info("demo").frames > 0, 30, "video")
        for i in range(16):  # the most one stream may have, each due at every frame
            await engine.add_watch(WatchSpec("demo", f"a shape number {i} is visible", every_s=0.5))
        await until(lambda: len(timed.evals) >= 32, 30, "evaluations running")
        loop = asyncio.get_running_loop()
        submitted: dict[str, float] = {}
        done: dict[str, asyncio.Future[QuestionEvent]] = {}

        def ask(text: str, owner: str) -> None:
            fut: asyncio.Future[QuestionEvent] = loop.create_future()
            done[text] = fut

            def reply(ev: QuestionEvent) -> None:
                if isinstance(ev, FINAL) and not fut.done():
                    fut.set_result(ev)

            submitted[text] = time.monotonic()
            engine.submit(Question(text, "demo", text, 2, None, reply, time.time(), owner=owner))

        for burst in range(4):
            for n in range(6):  # three connections, two questions each, while evaluations keep coming due
                ask(f"burst {burst} question {n}: what moves?", owner=f"c{n % 3}")
                await asyncio.sleep(0.01)
            results = await asyncio.wait_for(asyncio.gather(*done.values()), 60)
            assert all(isinstance(r, Answered) for r in results), results
            await asyncio.sleep(0.3)  # evaluations catch up between bursts
        for text, at in submitted.items():
            began = timed.answers[text]
            behind = [e for e in timed.evals if e[1] > at and e[0] < began]  # running or started while it waited
            assert len(behind) <= 1, f"{text!r} waited behind {len(behind)} evaluations"
        # Watches keep being evaluated after the bursts (however loaded the machine, within a bound).
        await until(lambda: sum(w.evaluations for w in engine.watches()) >= 16 * 4, 30, "evaluations going on")
        watches = engine.watches()
        assert sum(w.dropped for w in watches) > 0  # ... and what came due while questions waited was dropped
        assert engine.background.evaluations_waiting <= 16  # never more than one waiting per watch
    finally:
        await engine.close()


class SlowDescriptions(SmolVLMAdapter):
    """Descriptions take a while (a pause per piece); questions do not."""

    decode = None  # type: ignore[assignment]  # not SupportsSteps: answered through generate, piece by piece
    described: list[str]

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
        *,
        recalled: Sequence[Any] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        pieces = super().generate(prefix, turns, question, max_new_tokens, cancel, recalled=recalled, detail=detail)
        if not question.startswith("In one short sentence"):
            return pieces
        self.described.append(question)

        def slow() -> Iterator[str]:
            for i, piece in enumerate(pieces):
                time.sleep(0.05)
                yield piece if i else "Something happened. "

        return slow()


@pytest.mark.parametrize(
    ("places", "made"),
    [
        (1, "cancelled once, made again"),  # the description holds the only place: the question takes it
        (2, "made once, beside the question"),  # a place is free: nothing is cancelled
    ],
)
async def test_a_description_never_holds_up_a_question(tiny: SmolVLMAdapter, places: int, made: str) -> None:
    adapter = SlowDescriptions(tiny.model, tiny.tokenizer, "tiny-random", default_budget=1024)
    adapter.described = []
    engine = Engine(adapter, EngineSettings(fps=1.0, max_active=places), source_factory(lossless=False))
    updates: list[Any] = []
    engine.listen(updates.append)
    await engine.start([parse_source("demo")])
    try:
        await until(lambda: engine.stream_info("demo").frames > 0, 30, "video")
        # The random model's P(yes) is far above 0.16 for anything: it fires at the first evaluation.
        await engine.add_watch(WatchSpec("demo", "anything at all", threshold=0.16, describe=True, cooldown_s=3600))
        await until(lambda: bool(adapter.described), 30, "a description under way")
        answered: asyncio.Future[QuestionEvent] = asyncio.get_running_loop().create_future()

        def reply(ev: QuestionEvent) -> None:
            if isinstance(ev, FINAL) and not answered.done():
                answered.set_result(ev)

        asked = time.monotonic()
        engine.submit(Question("q", "demo", "What moves?", 4, None, reply, time.time()))
        assert isinstance(await asyncio.wait_for(answered, 30), Answered)
        assert time.monotonic() - asked < 1.5, "the question waited for the whole description"
        await until(lambda: any(getattr(u.event, "text", None) for u in updates if hasattr(u, "event")), 60, "it")
        if places == 1:
            assert len(adapter.described) >= 2, made
        else:
            assert len(adapter.described) == 1, made
    finally:
        await engine.close()
