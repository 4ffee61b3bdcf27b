"""Answers on the inference thread, one step at a time, many at once.

:meth:`Answerer.begin` starts an answer: the stream's prefix brought up to date, archived clips recalled
(:mod:`engine.recall`), the newest frame added in detail when asked, and the question prefilled on a fork
of the prefix (:mod:`models.generation`) — so the stream keeps taking frames while the answer runs, and
other answers on it run beside it. What does not fit the model's window is left out, detail first, then
the recalled clips. :meth:`Answerer.step` moves every active answer one token on: answers of a model that
decodes in batches (:class:`~models.adapter.SupportsSteps`) in one forward pass, any other (a guided
answer, a model with only ``generate``) one piece each. The engine interleaves these steps with frame
ingest, so no answer holds the others, or the cameras, for more than one step.

Inference thread only: an :class:`Answering` is never touched by the event loop, which gets
:class:`Progress` values back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Literal

from engine.events import AnswerContext, RecalledSpan
from engine.recall import AUTO, Recalled, Recaller, RecallRequest
from errors import BadRequest, TooLarge
from memory import HiCoMemory, Segment
from models.adapter import CountsUsage, ModelAdapter, Prefix, SupportsGuided, SupportsSteps, Turn, Usage, steps
from models.generation import Generation
from models.guided import GuidedAnswerer, GuidedSettings

log = logging.getLogger("livesight.engine")

#: How a guided answer picks the visual tokens it keeps (see :mod:`models.guided`).
GuidedMode = Literal["uniform", "attention"]


@dataclass(frozen=True, slots=True)
class Ask:
    """What the inference thread needs to answer a question."""

    key: int
    stream: str
    question: str
    turns: tuple[Turn, ...]
    max_new_tokens: int
    cancel: threading.Event
    guided: GuidedMode | None = None
    recall: RecallRequest = AUTO
    detail: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """What one step did for one answer: the text it completed, and at the end the whole text and context.
    ``cancelled``: it ended because its question was cancelled."""

    piece: str
    done: bool = False
    text: str = ""
    context: AnswerContext | None = None
    cancelled: bool = False


@dataclass(eq=False)
class Answering:
    """One answer under way (inference thread only)."""

    ask: Ask
    context: AnswerContext
    gen: Generation | None = None  # batched decoding
    pieces: Iterator[str] | None = None  # one piece per step otherwise
    parts: list[str] = field(default_factory=list)
    done: bool = False

    def stop(self) -> None:
        """End it now (cancelled): its cache, or its generator and whatever that holds, can go."""
        if self.gen is not None:
            self.gen.stop()
        if isinstance(self.pieces, _Primed):
            self.pieces.close()
        self.done = True

    def progress(self, piece: str, *, cancelled: bool = False) -> Progress:
        if piece:
            self.parts.append(piece)
        if not self.done:
            return Progress(piece)
        context = self.context
        usage = self.gen.usage if self.gen is not None else getattr(self.pieces, "usage", None)
        if isinstance(usage, Usage):
            context = replace(context, prompt_tokens=usage.prompt, completion_tokens=usage.completion)
        return Progress(piece, True, "".join(self.parts), context, cancelled)


class Answerer:
    """Begins and steps answers for one model (see the module doc)."""

    def __init__(
        self,
        adapter: ModelAdapter,
        *,
        recaller: Callable[[], Recaller | None],
        timezone: tzinfo,
        clock: Callable[[], float],
    ) -> None:
        self.adapter = adapter
        self._recaller = recaller
        self.timezone = timezone
        self._clock = clock

    # --- beginning ---------------------------------------------------------------------------------
    def begin(self, ask: Ask, prefix: Prefix, memory: HiCoMemory, image: object) -> tuple[Answering, Progress]:
        """Start answering ``ask`` on the stream's current ``prefix`` (``memory`` its memory, ``image`` its
        newest frame); the first step's progress comes with it."""
        if ask.guided is not None:
            answering = self._guided(ask, prefix, memory)
        else:
            recalled = self._recall(ask, memory)
            detail = image if ask.detail else None
            answering = self._begin(ask, prefix, recalled, detail)
        return answering, self._first(answering)

    def _begin(self, ask: Ask, prefix: Prefix, recalled: Recalled, detail: object) -> Answering:
        # What to try, richest first: without the detail, then without the recalled clips too.
        attempts: list[tuple[Recalled, object]] = [(recalled, detail)]
        if detail is not None:
            attempts.append((recalled, None))
        if recalled.segments:
            attempts.append((Recalled((), ""), None))
        for i, (rec, det) in enumerate(attempts):
            context = self._context(prefix, ask, rec, det is not None)
            try:
                if steps(self.adapter):
                    extra = self.adapter.context_pieces(rec.segments, det)  # type: ignore[arg-type]
                    gen = self.adapter.begin(prefix, ask.turns, ask.question, ask.max_new_tokens, extra=extra)
                    return Answering(ask, context, gen=gen)
                pieces = self.adapter.generate(
                    prefix,
                    ask.turns,
                    ask.question,
                    ask.max_new_tokens,
                    ask.cancel,
                    recalled=rec.segments,
                    detail=det,  # type: ignore[arg-type]
                )
                return Answering(ask, context, pieces=_primed(pieces))
            except TooLarge:
                if i == len(attempts) - 1:
                    raise
        raise TooLarge("the question does not fit the model's context window")

    def _guided(self, ask: Ask, prefix: Prefix, memory: HiCoMemory) -> Answering:
        adapter = self.adapter
        if not isinstance(adapter, SupportsGuided) or ask.guided is None:
            raise BadRequest(f"{adapter.model_id} does not support guided answers")
        decoder, _ = adapter.language_model()
        settings = GuidedSettings.for_depth(ask.guided, len(decoder.layers))
        pieces = GuidedAnswerer(adapter, settings).generate(
            memory.segments(), ask.turns, ask.question, ask.max_new_tokens, ask.cancel
        )
        return Answering(ask, self._context(prefix, ask, Recalled((), ""), False), pieces=_primed(pieces))

    def _first(self, a: Answering) -> Progress:
        if a.gen is not None:
            a.done = a.gen.done
            return a.progress(a.gen.piece)
        return self.step([a])[0]

    def _recall(self, ask: Ask, memory: HiCoMemory) -> Recalled:
        recaller = self._recaller()
        if recaller is None:
            return Recalled((), "")
        return recaller.choose(ask.stream, ask.question, ask.recall, memory.segments(), self._clock())

    # --- stepping ----------------------------------------------------------------------------------
    def step(self, answers: Sequence[Answering]) -> list[Progress]:
        """Move every answer one token (or piece) on; cancelled ones end here."""
        out: dict[int, Progress] = {}
        batch = []
        for i, a in enumerate(answers):
            if a.ask.cancel.is_set() and not a.done:
                a.stop()
                out[i] = a.progress("", cancelled=True)
            elif a.gen is not None:
                batch.append((i, a))
            else:
                out[i] = self._next_piece(a)
        if batch:
            gens = [a.gen for _, a in batch if a.gen is not None]
            assert isinstance(self.adapter, SupportsSteps)
            self.adapter.decode(gens)
            for i, a in batch:
                assert a.gen is not None
                a.done = a.gen.done
                out[i] = a.progress(a.gen.piece)
        return [out[i] for i in range(len(answers))]

    def _next_piece(self, a: Answering) -> Progress:
        assert a.pieces is not None
        try:
            piece = next(a.pieces)
        except StopIteration:
            a.done = True
            return a.progress("", cancelled=a.ask.cancel.is_set())
        return a.progress(piece)

    # --- the context an answer reports -------------------------------------------------------------
    def _context(self, prefix: Prefix, ask: Ask, recalled: Recalled, detail: bool) -> AnswerContext:
        return AnswerContext(
            start=prefix.start,
            end=prefix.end,
            clock_start=self._iso(prefix.wall_start),
            clock_end=self._iso(prefix.wall_end),
            frames=prefix.frames,
            tokens=prefix.length,
            visual_tokens=prefix.visual_tokens,
            guided=ask.guided,
            turns=len(ask.turns),
            recalled=tuple(_span(s, self._iso) for s in recalled.segments),
            recall=recalled.reason or None,
            detail=detail,
        )

    def _iso(self, t: float | None) -> str | None:
        return None if t is None else datetime.fromtimestamp(t, self.timezone).isoformat(timespec="seconds")


def _span(s: Segment, iso: Callable[[float | None], str | None]) -> RecalledSpan:
    return RecalledSpan(s.start, s.end, iso(s.wall_start), iso(s.wall_end), s.frames)


class _Primed(Iterator[str]):
    """A piece iterator whose first piece is computed at once (so a question that does not fit fails in
    :meth:`Answerer.begin`, where it can be retried with less context, not in a later step)."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.usage = pieces.usage if isinstance(pieces, CountsUsage) else None
        self._first: list[str] = []
        self._ended = False
        try:
            self._first.append(next(pieces))
        except StopIteration:
            self._ended = True

    def __next__(self) -> str:
        if self._first:
            return self._first.pop()
        if self._ended:
            raise StopIteration
        return next(self._pieces)

    def close(self) -> None:
        """Close the underlying generator (its ``finally`` blocks run now, not at garbage collection)."""
        self._ended = True
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


def _primed(pieces: Iterator[str]) -> Iterator[str]:
    return _Primed(pieces)
