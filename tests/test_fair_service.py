"""Fair service across connections, end to end: four connections keeping the queue full of long questions
cannot make a polite client wait behind more than one question of each, nor get it refused.

The guarantee (README, "Questions"): a question waits behind at most the one being answered and one
question of every other connection with questions waiting; a connection holding fewer waiting questions
than another is never refused for a full queue. Checked here on the order the model saw the questions in,
not on timings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from engine.engine import EngineSettings
from memory.segment import Segment
from models.adapter import Prefix, Turn
from models.families.smolvlm import SmolVLMAdapter
from tests.support.server import Client, client, running_server, wait_for_frames


class Sequenced(SmolVLMAdapter):
    """The real tiny adapter, answering with fixed pieces (one every 2 ms) and recording the order in which
    questions start."""

    # Not SupportsSteps: the engine answers through generate() below, one piece per step, instead of
    # batched decoding (which tests/test_generation.py and tests/test_interleaving.py cover).
    decode = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[str] = []

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
        *,
        recalled: Sequence[Segment] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        self.started.append(question)
        for _ in range(max_new_tokens):
            if cancel.wait(0.002):
                return
            yield "x"


async def abuse(c: Client, name: str, stop: asyncio.Event, refused: list[str]) -> None:
    """Keep 4 long questions in flight, asking again whenever one ends."""
    n = 0

    async def ask() -> None:
        nonlocal n
        q = {"type": "ask", "id": f"{name}-{n}", "stream": "demo", "question": f"{name} {n}", "max_new_tokens": 64}
        n += 1
        await c.send(q)

    for _ in range(4):
        await ask()
    while not stop.is_set():
        msg = await c.recv(60)
        if msg["type"] == "error":
            refused.append(msg["code"])
        if msg["type"] in ("answer", "error", "cancelled") and not stop.is_set():
            await ask()


async def test_a_polite_client_is_served_between_greedy_ones(tiny: SmolVLMAdapter) -> None:
    model = Sequenced(tiny.model, tiny.tokenizer, "tiny-random", default_budget=1024)
    async with running_server(model, EngineSettings(fps=1.0, max_queue=8)) as srv:  # 16 in flight, 4 answered: full
        await wait_for_frames(srv.engine, "demo", 1)
        stop = asyncio.Event()
        refused: list[str] = []
        async with client(srv.url) as a, client(srv.url) as b, client(srv.url) as c, client(srv.url) as d:
            greedy = [
                asyncio.create_task(abuse(x, n, stop, refused)) for x, n in zip((a, b, c, d), "abcd", strict=True)
            ]
            async with client(srv.url) as polite:
                while len(model.started) < 8:  # the queue is full of greedy questions by now
                    await asyncio.sleep(0.01)
                for i in range(5):
                    asked_at = len(model.started)
                    await polite.send(
                        {"type": "ask", "id": f"p{i}", "stream": "demo", "question": f"polite {i}", "max_new_tokens": 4}
                    )
                    final = await polite.next(lambda m: m["type"] in ("answer", "error"), timeout=60)
                    assert final["type"] == "answer", final  # never refused, though the queue was full
                    mine = model.started.index(f"polite {i}")
                    ahead = [q.split()[0] for q in model.started[asked_at:mine]]
                    # Before it: the question being answered when it arrived (if that one started after we
                    # looked) and at most one question of each of the 4 greedy connections.
                    assert len(ahead) <= 5, ahead
                    assert len(set(ahead[1:])) == len(ahead[1:]), ahead
            stop.set()
            for task in greedy:
                task.cancel()
            await asyncio.gather(*greedy, return_exceptions=True)
        # The full queue made room for the polite client by refusing greedy questions, retryably.
        assert "busy" in refused
