"""Shared machinery for decoder LMs fed through ``inputs_embeds``: the cached prefix and generation.

A family adapter subclasses :class:`EmbeddingContext` and supplies the prompt layout (text around each
segment), the visual encoder and, where the family needs them, its own positions. This module does the
rest: interleave text and visual embeddings, prefill a KV cache with explicit positions, extend it as
segments arrive, and answer questions on it without disturbing it.

Position policy (1-D families): the prefix holds positions ``0 .. length-1`` contiguously; appended
segments continue from ``next_position``; a question continues from the prefix. A rebuilt prefix (after
eviction or re-compression) is renumbered from 0. Under this policy a question answered on the cached
prefix gives the same logits as one full forward pass over the same pieces (tested).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from livesight.errors import TooLarge
from memory.segment import Segment
from models.adapter import Prefix, Turn

#: A prompt is a list of pieces: text, or a ``[T, D]`` tensor of visual embeddings.
Piece = str | torch.Tensor


@dataclass
class EmbeddingPrefix:
    """The cached prefix: KV cache over the head text and every segment in ``segment_ids``."""

    cache: DynamicCache
    length: int
    next_position: int
    segment_ids: tuple[int, ...]
    start: float | None = None
    end: float | None = None
    frames: int = 0
    visual_tokens: int = 0
    meta: dict[str, object] = field(default_factory=dict)


def own(prefix: Prefix) -> EmbeddingPrefix:
    if not isinstance(prefix, EmbeddingPrefix):
        raise TypeError(f"expected a prefix built by this adapter, got {type(prefix).__name__}")
    return prefix


def restore(prefix: EmbeddingPrefix) -> None:
    """Cut every layer of the prefix's cache back to ``prefix.length`` tokens.

    Per layer, not by the cache's reported length: a forward pass that failed part-way (out of memory in
    layer k, say) has extended only the layers before k, and cutting all layers by layer 0's excess would
    eat into the prefix of the others. ``crop`` takes a negative count in transformers 5.x.
    """
    for layer in prefix.cache.layers:
        if getattr(layer, "is_initialized", False):
            extra = int(layer.keys.shape[-2]) - prefix.length
            if extra > 0:
                layer.crop(-extra)


class EmbeddingContext:
    """Prefix caching and greedy generation over ``inputs_embeds`` with explicit positions."""

    model: Any  # a transformers model; typed loosely because transformers is
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    stop_token_ids: frozenset[int]
    max_positions: int | None = None  # the language model's position limit, when it has one

    # --- hooks a family supplies ---------------------------------------------------------------
    def head_text(self) -> str:
        raise NotImplementedError

    def segment_pieces(self, segment: Segment) -> list[Piece]:
        raise NotImplementedError

    def suffix_text(self, turns: Sequence[Turn], question: str) -> str:
        raise NotImplementedError

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``[L]`` token ids -> ``[L, D]`` input embeddings."""
        raise NotImplementedError

    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache, *, all_logits: bool
    ) -> torch.Tensor:
        """Run the language model on ``[1, L, D]`` embeddings at ``positions``, extending ``cache``.

        Returns float logits, ``[1, L, V]`` if ``all_logits`` else ``[1, 1, V]`` (the last position)."""
        raise NotImplementedError

    # --- machinery -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def embed_pieces(self, pieces: Sequence[Piece]) -> torch.Tensor:
        """Pieces -> ``[L, D]`` embeddings on the model's device and dtype."""
        parts = []
        for piece in pieces:
            if isinstance(piece, str):
                if piece:
                    parts.append(self.embed_ids(self.tokenize(piece).to(self.device)))
            else:
                parts.append(piece.to(self.device, self.dtype))
        return torch.cat(parts, dim=0)

    def positions(self, start: int, length: int) -> torch.Tensor:
        return torch.arange(start, start + length, device=self.device).unsqueeze(0)

    @torch.inference_mode()
    def _prefill(
        self, pieces: Sequence[Piece], cache: DynamicCache, start: int, *, all_logits: bool = False
    ) -> tuple[torch.Tensor, int]:
        embeds = self.embed_pieces(pieces)
        n = int(embeds.shape[0])
        logits = self.forward(embeds.unsqueeze(0), self.positions(start, n), cache, all_logits=all_logits)
        return logits, n

    def build_prefix(self, segments: Sequence[Segment]) -> EmbeddingPrefix:
        cache = DynamicCache()
        pieces: list[Piece] = [self.head_text()]
        for seg in segments:
            pieces.extend(self.segment_pieces(seg))
        _, n = self._prefill(pieces, cache, 0)
        prefix = EmbeddingPrefix(cache=cache, length=n, next_position=n, segment_ids=())
        self._account(prefix, segments)
        return prefix

    def extend_prefix(self, prefix: Prefix, segments: Sequence[Segment]) -> EmbeddingPrefix:
        prefix = own(prefix)
        if not segments:
            return prefix
        pieces: list[Piece] = []
        for seg in segments:
            pieces.extend(self.segment_pieces(seg))
        try:
            _, n = self._prefill(pieces, prefix.cache, prefix.next_position)
        except BaseException:
            restore(prefix)  # leave the prefix exactly as it was, so it stays usable
            raise
        prefix.length += n
        prefix.next_position += n
        self._account(prefix, segments)
        return prefix

    @staticmethod
    def _account(prefix: EmbeddingPrefix, segments: Sequence[Segment]) -> None:
        if not segments:
            return
        prefix.segment_ids = prefix.segment_ids + tuple(s.id for s in segments)
        if prefix.start is None:
            prefix.start = segments[0].start
        prefix.end = segments[-1].end
        prefix.frames += sum(s.frames for s in segments)
        prefix.visual_tokens += sum(s.num_tokens for s in segments)

    @torch.inference_mode()
    def question_logits(self, prefix: EmbeddingPrefix, turns: Sequence[Turn], question: str) -> torch.Tensor:
        """``[L, V]`` logits of the question suffix computed on the cached prefix (the cache is restored)."""
        try:
            logits, _ = self._prefill(
                [self.suffix_text(turns, question)], prefix.cache, prefix.next_position, all_logits=True
            )
        finally:
            restore(prefix)
        return logits[0]

    @torch.inference_mode()
    def full_logits(self, segments: Sequence[Segment], turns: Sequence[Turn], question: str) -> torch.Tensor:
        """``[L, V]`` logits of the question suffix from one forward pass over everything (no reuse)."""
        pieces: list[Piece] = [self.head_text()]
        for seg in segments:
            pieces.extend(self.segment_pieces(seg))
        n_prefix = int(self.embed_pieces(pieces).shape[0])
        pieces.append(self.suffix_text(turns, question))
        logits, _ = self._prefill(pieces, DynamicCache(), 0, all_logits=True)
        return logits[0, n_prefix:]

    @torch.inference_mode()
    def generate_ids(
        self,
        prefix: EmbeddingPrefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
    ) -> Iterator[int]:
        """Greedy decoding on the cached prefix; yields token ids; restores the cache when done.

        Earlier turns are dropped, oldest first, when the prefix, the question and ``max_new_tokens`` would
        not fit in the model's positions; :class:`TooLarge` if even the question alone does not fit.
        """
        cache = prefix.cache
        suffix = self.fit_suffix(prefix, turns, question, max_new_tokens)
        try:
            logits, n = self._prefill([suffix], cache, prefix.next_position)
            pos = prefix.next_position + n
            for _ in range(max_new_tokens):
                if cancel.is_set():
                    return
                token = int(logits[0, -1].argmax())
                if token in self.stop_token_ids:
                    return
                yield token
                ids = torch.tensor([token], device=self.device)
                logits = self.forward(self.embed_ids(ids).unsqueeze(0), self.positions(pos, 1), cache, all_logits=False)
                pos += 1
        finally:
            restore(prefix)

    def fit_suffix(self, prefix: EmbeddingPrefix, turns: Sequence[Turn], question: str, max_new_tokens: int) -> str:
        """The question suffix with as many recent turns as fit in ``max_positions``."""
        turns = list(turns)
        while True:
            text = self.suffix_text(turns, question)
            if self.max_positions is None:
                return text
            need = prefix.next_position + len(self.tokenize(text)) + max_new_tokens
            if need <= self.max_positions:
                return text
            if not turns:
                raise TooLarge(
                    f"the question and {max_new_tokens} new tokens do not fit after {prefix.next_position} tokens "
                    f"of context (the model takes {self.max_positions}); ask a shorter question or fewer tokens"
                )
            turns.pop(0)

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
    ) -> Iterator[str]:
        """Greedy answer as text pieces, decoded incrementally (never splitting a UTF-8 character)."""
        ids: list[int] = []
        sent = ""
        for token in self.generate_ids(own(prefix), turns, question, max_new_tokens, cancel):
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent) :]
                sent = text
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if text != sent and text.startswith(sent):
            yield text[len(sent) :]
