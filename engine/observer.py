"""What the engine reports while it works, for whoever measures it: a small Protocol it calls.

The engine pushes only what it alone sees as it happens — a frame reaching memory (with its lag), a
question ending, the inference worker starting and finishing work, a watch evaluated, dropped or firing.
Everything that is state (streams, drops, memory tiers, the queue) is read from the engine when someone
asks (``Engine.streams_info``, ``Engine.queued``). The engine works the same with no observer
(:class:`NoObserver`); ``web/metrics.py`` implements this one for Prometheus. Every method is called on
the event loop and must not block.
"""

from __future__ import annotations

from typing import Literal, Protocol

from engine.events import Answered, Cancelled, Failed

#: What the inference worker is busy with.
Work = Literal["answer", "ingest", "evaluate", "describe"]


class EngineObserver(Protocol):
    def frame_ingested(self, stream: str, lag_s: float) -> None:
        """A frame of ``stream`` reached memory ``lag_s`` seconds after its source captured it."""
        ...

    def question_finished(self, event: Answered | Cancelled | Failed) -> None:
        """A question submitted to the engine ended: answered, cancelled, or failed — refused at submission
        (unknown stream, no video, a full queue) included."""
        ...

    def worker_busy(self, work: Work) -> None:
        """The inference worker started answering a question, ingesting a batch of frames, evaluating a watch
        or describing (an alert's description, a caption)."""
        ...

    def worker_idle(self) -> None:
        """The inference worker finished what it started."""
        ...

    def evaluation_finished(self, stream: str, seconds: float, *, ok: bool) -> None:
        """A watch on ``stream`` was evaluated (``ok``) or its evaluation failed, taking ``seconds`` of the
        inference worker."""
        ...

    def evaluation_dropped(self, stream: str) -> None:
        """A watch on ``stream`` came due while its previous evaluation still waited (the older one is
        dropped: the worker is behind)."""
        ...

    def alert_fired(self, stream: str) -> None:
        """A watch on ``stream`` fired."""
        ...


class NoObserver:
    """Nobody is listening."""

    def frame_ingested(self, stream: str, lag_s: float) -> None:
        pass

    def question_finished(self, event: Answered | Cancelled | Failed) -> None:
        pass

    def worker_busy(self, work: Work) -> None:
        pass

    def worker_idle(self) -> None:
        pass

    def evaluation_finished(self, stream: str, seconds: float, *, ok: bool) -> None:
        pass

    def evaluation_dropped(self, stream: str) -> None:
        pass

    def alert_fired(self, stream: str) -> None:
        pass
