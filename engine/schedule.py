"""Background work on the one inference worker: watch evaluations, alert descriptions and captions, fitted
around ingest and users' questions without ever queueing without bound. Pure bookkeeping (event loop
only; no asyncio), used by the worker loop in :mod:`engine.engine`.

**Evaluations** (one short prefill each) wait in one slot per watch: an evaluation that comes due while
the watch's previous one still waits replaces it — the newer one reads newer video — and the replaced one
is counted as dropped. So at most one evaluation per watch ever waits.

**A question waits behind at most one evaluation.** Every question gets a number when it is queued
(:attr:`Question.seq`); after each evaluation the scheduler remembers the newest number given out so far
(the *barrier*). An evaluation may start only while no waiting question has a number at or below the
barrier: once a question has seen one evaluation start (or run) while it waited, no other evaluation
starts until it is taken. Evaluations run before ingest otherwise (alerts should be prompt); they are
bounded by the number of watches, so ingest is never starved.

**Generations** (a description after an alert, a stream's periodic caption: at most
:data:`~engine.watches.DESCRIBE_TOKENS` tokens each) take a free answer place when no user question waits
and are stepped with the answers; when a question finds every place taken, one is cancelled and put back
at the front, so a user never waits behind one (beyond the step under way). They wait in a bounded FIFO
(:data:`MAX_GENERATIONS`); when it is full the oldest is dropped and counted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

#: Descriptions and captions waiting, all streams together.
MAX_GENERATIONS = 32


@dataclass(eq=False)
class Generation:
    """A description of an alert (``event`` set) or a caption of a stream (``event`` None)."""

    kind: Literal["describe", "caption"]
    stream: str
    prompt: str
    event: int | None = None  # the event a description belongs to
    watch: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


class Background:
    """Pending evaluations (one per watch) and generations (bounded), and the barrier (see the module doc)."""

    def __init__(self, max_generations: int = MAX_GENERATIONS) -> None:
        self._evaluations: OrderedDict[int, None] = OrderedDict()  # watch ids, oldest due first
        self._generations: deque[Generation] = deque()
        self.max_generations = max_generations
        self.barrier = -1  # the newest question number given out when the last evaluation ended
        self.dropped_generations = 0

    # --- evaluations ---------------------------------------------------------------------------------
    def due(self, watch: int) -> bool:
        """Watch ``watch`` is due; False if its previous evaluation was still waiting (it is replaced:
        counted as dropped by the caller)."""
        replaced = watch in self._evaluations
        self._evaluations.pop(watch, None)
        self._evaluations[watch] = None
        return not replaced

    def forget(self, watch: int) -> None:
        """A removed watch: its waiting evaluation goes too."""
        self._evaluations.pop(watch, None)

    def evaluation_ready(self, waiting: Iterable[int]) -> bool:
        """Whether an evaluation may start now, given the numbers of the questions waiting."""
        return bool(self._evaluations) and all(seq > self.barrier for seq in waiting)

    def next_evaluation(self) -> int:
        """The watch whose evaluation has waited longest (``KeyError`` when none waits)."""
        watch, _ = self._evaluations.popitem(last=False)
        return watch

    def evaluated(self, newest_seq: int) -> None:
        """An evaluation ended; ``newest_seq`` is the number of the newest question queued so far."""
        self.barrier = newest_seq

    @property
    def evaluations_waiting(self) -> int:
        return len(self._evaluations)

    # --- generations ---------------------------------------------------------------------------------
    def add(self, job: Generation) -> Generation | None:
        """Queue a description or caption; returns the one dropped to make room (the oldest), if any."""
        dropped = None
        if len(self._generations) >= self.max_generations:
            dropped = self._generations.popleft()
            self.dropped_generations += 1
        self._generations.append(job)
        return dropped

    def next_generation(self) -> Generation | None:
        return self._generations.popleft() if self._generations else None

    def put_back(self, job: Generation) -> None:
        """A generation cancelled for a user's question: first again next time (unless the queue filled
        meanwhile, in which case it is the one dropped)."""
        if len(self._generations) >= self.max_generations:
            self.dropped_generations += 1
            return
        job.cancel = threading.Event()
        self._generations.appendleft(job)

    def drop_stream(self, stream: str) -> None:
        """Forget the generations of a removed stream."""
        self._generations = deque(g for g in self._generations if g.stream != stream)

    @property
    def generations_waiting(self) -> int:
        return len(self._generations)
