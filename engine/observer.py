"""What the engine reports while it works, for whoever measures it: a small Protocol it calls.

The engine pushes only what it alone sees as it happens — a frame reaching memory (with its lag), a
question ending, the inference worker starting and finishing work. Everything that is state (streams,
drops, memory tiers, the queue) is read from the engine when someone asks (``Engine.streams_info``,
``Engine.queued``). The engine works the same with no observer (:class:`NoObserver`); ``web/metrics.py``
implements this one for Prometheus. Every method is called on the event loop and must not block.
"""

from __future__ import annotations

from typing import Literal, Protocol

from engine.events import Answered, Cancelled, Failed

#: What the inference worker is busy with.
Work = Literal["answer", "ingest"]


class EngineObserver(Protocol):
    def frame_ingested(self, stream: str, lag_s: float) -> None:
        """A frame of ``stream`` reached memory ``lag_s`` seconds after its source captured it."""
        ...

    def question_finished(self, event: Answered | Cancelled | Failed) -> None:
        """A question submitted to the engine ended: answered, cancelled, or failed — refused at submission
        (unknown stream, no video, a full queue) included."""
        ...

    def worker_busy(self, work: Work) -> None:
        """The inference worker started answering a question or ingesting a batch of frames."""
        ...

    def worker_idle(self) -> None:
        """The inference worker finished what it started."""
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
