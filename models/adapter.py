"""The model boundary: a small Protocol every model family's adapter satisfies, and optional capabilities.

:class:`ModelAdapter` is what the engine needs of every model. A family that can do more declares it by
satisfying a capability Protocol (:class:`SupportsGuided`); the engine asks with ``isinstance`` and never
probes attributes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

import numpy as np
import torch

from memory.segment import Segment

if TYPE_CHECKING:
    from models.context import Piece
    from models.generation import Generation


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier question and answer of a conversation."""

    question: str
    answer: str


@dataclass(slots=True)
class Usage:
    """Tokens one answer read and generated, counted while it is generated (final once its pieces are
    exhausted)."""

    #: everything the answer was conditioned on: the cached prefix, pieces after it, earlier turns and the
    #: question (None: not counted)
    prompt: int | None = None
    #: tokens generated, the end-of-answer token excluded
    completion: int = 0


@runtime_checkable
class CountsUsage(Protocol):
    """An optional capability of the pieces :meth:`ModelAdapter.generate` returns: they count the answer's
    tokens (:class:`Usage`), which text pieces cannot tell (a piece may hold several tokens, or none)."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class Encoded:
    """Visual tokens of a batch of frames.

    Attributes:
        tokens: ``[F, N, D]`` embeddings in the language model's input space.
        extras: per-token attributes, each ``[F, N, ...]``, stored beside the tokens in memory.
    """

    tokens: torch.Tensor
    extras: dict[str, torch.Tensor]


class Prefix(Protocol):
    """A cached prefix of the language model over some memory segments (adapter-specific contents)."""

    @property
    def segment_ids(self) -> tuple[int, ...]:
        """Ids of the segments it holds, in order."""
        ...

    @property
    def length(self) -> int:
        """Tokens in the cache, text and visual."""
        ...

    @property
    def start(self) -> float | None:
        """Stream time the first segment starts at (None: no segments)."""
        ...

    @property
    def end(self) -> float | None: ...

    @property
    def wall_start(self) -> float | None:
        """Wall-clock time (seconds since the epoch) the first segment starts at, for live streams."""
        ...

    @property
    def wall_end(self) -> float | None: ...

    @property
    def frames(self) -> int: ...

    @property
    def visual_tokens(self) -> int: ...


class ModelAdapter(Protocol):
    """What the engine needs of a vision-language model.

    All methods are blocking and must be called from one inference thread.
    """

    model_id: str
    tokens_per_frame: int  # native visual tokens per frame, before any compression
    default_budget: int  # a sensible in-context token budget for this model
    max_positions: int | None  # the language model's context window in positions, when it has one
    timezone: tzinfo  # where live streams' time labels are read (set by the server from its configuration)

    def encode(self, images: Sequence[np.ndarray]) -> Encoded:
        """Encode ``F`` RGB frames (each ``[H, W, 3]`` uint8) to visual tokens."""
        ...

    def prefix_length(self, segments: Sequence[Segment]) -> int:
        """Tokens a prefix over ``segments`` would hold (text and visual), without running the model."""
        ...

    def build_prefix(self, segments: Sequence[Segment]) -> Prefix:
        """Prefill the cached context over ``segments`` (time order) from scratch."""
        ...

    def extend_prefix(self, prefix: Prefix, segments: Sequence[Segment]) -> Prefix:
        """Append ``segments`` (newer than everything in ``prefix``) to the cached context, in place."""
        ...

    def update_prefix(self, prefix: Prefix | None, segments: Sequence[Segment]) -> Prefix:
        """Bring ``prefix`` up to ``segments`` (the memory's current ones, time order), reusing the cached
        part they share in order and prefilling the rest; ``None`` builds from scratch."""
        ...

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
        """Answer ``question`` after ``turns`` over the cached context, yielding text pieces.

        ``recalled`` segments (archived clips, time order) and the ``detail`` frame (``[H, W, 3]`` uint8,
        shown at high resolution) go between the cached prefix and the question: the prefix itself is reused
        untouched. Stops at the end of the answer, after ``max_new_tokens`` tokens, or soon after ``cancel``
        is set. Leaves ``prefix`` as it found it.
        """
        ...


@runtime_checkable
class SupportsGuided(Protocol):
    """Question-guided answering (:mod:`models.guided`): a 1-D RoPE decoder fed by ``inputs_embeds`` whose
    layers can be run one by one, so the visual span can shrink between two of them."""

    model_id: str
    device: torch.device
    stop_token_ids: frozenset[int]

    def head_text(self) -> str: ...
    def segment_pieces(self, segment: Segment) -> list[Piece]: ...
    def suffix_text(self, turns: Sequence[Turn], question: str) -> str: ...
    def embed_pieces(self, pieces: Sequence[Piece]) -> torch.Tensor: ...
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor: ...
    def text_pieces(self, tokens: Iterable[int]) -> Iterator[str]: ...

    def language_model(self) -> tuple[Any, Any]:
        """``(decoder, lm_head)``: a transformers decoder with ``layers``, ``rotary_emb`` and ``norm``."""
        ...


@runtime_checkable
class SupportsRecall(Protocol):
    """Recall scored by the model itself (:mod:`models.probe`): keys kept per archived clip, queries per
    question."""

    def recall_keys(self, segment: Segment) -> torch.Tensor: ...
    def recall_queries(self, question: str) -> torch.Tensor: ...


@runtime_checkable
class SupportsYesNo(Protocol):
    """A yes/no question answered as a probability on the cached prefix, without generating (watches)."""

    def yes_probability(self, prefix: Prefix, question: str) -> float: ...


@runtime_checkable
class SupportsSteps(Protocol):
    """Answers one token at a time, several at once (:mod:`models.generation`): :meth:`begin` prefills an
    answer on a fork of the prefix, :meth:`decode` moves many answers one token on in one forward pass."""

    def context_pieces(self, recalled: Sequence[Segment], detail: np.ndarray | None) -> list[Piece]: ...

    def begin(
        self, prefix: Prefix, turns: Sequence[Turn], question: str, max_new_tokens: int, *, extra: Sequence[Piece] = ()
    ) -> Generation: ...

    def decode(self, gens: Sequence[Generation]) -> None: ...


def steps(adapter: object) -> TypeGuard[SupportsSteps]:
    """Whether ``adapter`` answers step by step (:class:`SupportsSteps`). An adapter opts out by setting
    ``decode`` to None, on its class or on the instance (a test double that scripts ``generate``):
    ``isinstance`` alone honours None only on the class."""
    return isinstance(adapter, SupportsSteps) and getattr(adapter, "decode", None) is not None
