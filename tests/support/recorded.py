"""A live camera's recording for engine tests, and asking the engine directly (no server in between)."""

from __future__ import annotations

import asyncio
import time

from engine.engine import Engine, Question
from engine.events import FINAL, Answered, QuestionEvent
from stream.demo import render
from stream.source import SourceState, ThreadedSource


class RecordedCamera(ThreadedSource):
    """A live camera's ``seconds`` of the demo scene from scene second ``scene``, played as fast as the model
    takes them, with wall-clock capture times from ``t0`` (frames ``size`` = (width, height) when given)."""

    def __init__(
        self, name: str, fps: float, *, seconds: int, t0: float, scene: float = 0.0, size: tuple[int, int] | None = None
    ) -> None:
        super().__init__(name, "camera", fps, lossless=True)
        self.wall_clock = True
        self._seconds, self._t0, self._scene, self._size = seconds, t0, scene, size

    def _run(self) -> None:
        self.stats.state = SourceState.LIVE
        for t in range(self._seconds):
            if self._stop.is_set():
                return
            image = render(self._scene + t, *self._size) if self._size else render(self._scene + t)
            self._emit(float(t), image, captured_at=self._t0 + t)


async def ask(engine: Engine, question: str, *, stream: str = "cam", max_new_tokens: int = 4, **kw: object) -> Answered:
    """``question`` about ``stream`` through ``engine.submit``; its final event, which must be an answer."""
    done: asyncio.Future[QuestionEvent] = asyncio.get_running_loop().create_future()

    def reply(ev: QuestionEvent) -> None:
        if isinstance(ev, FINAL) and not done.done():
            done.set_result(ev)

    engine.submit(Question("q", stream, question, max_new_tokens, None, reply, time.time(), **kw))  # type: ignore[arg-type]
    ev = await asyncio.wait_for(done, 60)
    assert isinstance(ev, Answered), ev
    return ev
