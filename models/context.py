"""Shared machinery for decoder LMs fed through ``inputs_embeds``: the cached prefix and generation.

A family adapter subclasses :class:`EmbeddingContext` and supplies the prompt layout (text around each
segment), the visual encoder and, where the family needs them, its own positions. This module does the
rest: interleave text and visual embeddings, prefill a KV cache with explicit positions, extend it as
segments arrive, and answer questions on it without disturbing it.

Position policy (1-D families): the prefix holds positions ``0 .. length-1`` contiguously; appended
segments continue from ``next_position``; a question continues from the prefix. When older segments
change (re-compression or eviction in the memory), :meth:`EmbeddingContext.update_prefix` crops the cache
back to the end of the last segment both versions share and prefills the rest from there, so positions
stay contiguous from 0. Because the cache is causal, the kept part is exactly what a fresh prefill would
compute. Under this policy a question answered on the cached prefix gives the same logits as one full
forward pass over the same pieces (tested, max abs difference <= 1e-4).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

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
    #: cache length after the head text and after each segment: ``ends[i]`` is where segment ``i`` stops
    ends: tuple[int, ...] = ()
    head_length: int = 0
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
    """Drop whatever a question appended to the prefix's cache (``crop`` takes a negative count in 5.x)."""
    extra = prefix.cache.get_seq_length() - prefix.length
    if extra > 0:
        prefix.cache.crop(-extra)


class EmbeddingContext:
    """Prefix caching and greedy generation over ``inputs_embeds`` with explicit positions."""

    model: Any  # a transformers model; typed loosely because transformers is
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    stop_token_ids: frozenset[int]

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
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
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
        _, n = self._prefill([self.head_text()], cache, 0)
        prefix = EmbeddingPrefix(cache=cache, length=n, next_position=n, segment_ids=(), head_length=n)
        return self.extend_prefix(prefix, segments)

    def extend_prefix(self, prefix: Prefix, segments: Sequence[Segment]) -> EmbeddingPrefix:
        prefix = own(prefix)
        if not segments:
            return prefix
        embeds = [self.embed_pieces(self.segment_pieces(seg)) for seg in segments]
        lengths = [int(e.shape[0]) for e in embeds]
        with torch.inference_mode():
            self.forward(
                torch.cat(embeds).unsqueeze(0),
                self.positions(prefix.next_position, sum(lengths)),
                prefix.cache,
                all_logits=False,
            )
        for seg, n in zip(segments, lengths, strict=True):
            prefix.length += n
            prefix.next_position += n
            prefix.ends = (*prefix.ends, prefix.length)
            prefix.segment_ids = (*prefix.segment_ids, seg.id)
            prefix.start = seg.start if prefix.start is None else prefix.start
            prefix.end = seg.end
            prefix.frames += seg.frames
            prefix.visual_tokens += seg.num_tokens
        return prefix

    def update_prefix(self, prefix: Prefix | None, segments: Sequence[Segment]) -> EmbeddingPrefix:
        """Bring ``prefix`` up to ``segments`` (the memory's current ones, time order), in place.

        Segments it already holds in the same leading order are kept; from the first one that differs
        the cache is cropped and prefilled again, so appending a clip costs only the clip and a
        re-compressed tier costs only what follows it. ``None`` builds from scratch. If this raises,
        the prefix is left inconsistent: the caller drops it and passes ``None`` next time.
        """
        if prefix is None:
            return self.build_prefix(segments)
        prefix = own(prefix)
        if len(prefix.ends) != len(prefix.segment_ids):
            # Built by an override that does not record segment boundaries: nothing to crop back to.
            return self.build_prefix(segments)
        have = prefix.segment_ids
        keep = 0
        while keep < min(len(have), len(segments)) and have[keep] == segments[keep].id:
            keep += 1
        if keep < len(have):
            cut = prefix.ends[keep - 1] if keep else prefix.head_length
            restore(prefix)
            prefix.cache.crop(-(prefix.cache.get_seq_length() - cut))
            prefix.length = prefix.next_position = cut
            prefix.ends, prefix.segment_ids = prefix.ends[:keep], have[:keep]
            kept = segments[:keep]
            prefix.start = kept[0].start if kept else None
            prefix.end = kept[-1].end if kept else None
            prefix.frames = sum(s.frames for s in kept)
            prefix.visual_tokens = sum(s.num_tokens for s in kept)
        return self.extend_prefix(prefix, segments[keep:])

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
        """Greedy decoding on the cached prefix; yields token ids; restores the cache when done."""
        cache = prefix.cache
        try:
            logits, n = self._prefill([self.suffix_text(turns, question)], cache, prefix.next_position)
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

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
    ) -> Iterator[str]:
        """Greedy answer as text pieces, decoded incrementally (never splitting a UTF-8 character)."""
        return self.text_pieces(self.generate_ids(own(prefix), turns, question, max_new_tokens, cancel))

    def text_pieces(self, tokens: Iterable[int]) -> Iterator[str]:
        """Token ids -> text pieces as soon as they decode to whole characters."""
        ids: list[int] = []
        sent = ""
        for token in tokens:
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[attr-defined]
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent) :]
                sent = text
        text = self.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[attr-defined]
        if text != sent and text.startswith(sent):
            yield text[len(sent) :]
