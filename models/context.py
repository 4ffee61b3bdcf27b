"""Shared machinery for decoder LMs fed through ``inputs_embeds``: the cached prefix and generation.

A family adapter subclasses :class:`EmbeddingContext` and supplies the prompt layout (text around each
segment), the visual encoder and, where the family needs them, its own positions. This module does the
rest: interleave text and visual embeddings, prefill a KV cache with explicit positions, extend it as
segments arrive, and answer questions on it without disturbing it.

Position policy: every piece advances a running position. Text and 1-D visual tokens take one
position each (the prefix holds ``0 .. length-1``); a family with 3-D positions (Qwen's M-RoPE) places a
:class:`Visual` piece on its own grid and advances by less than its length, so ``next_position`` is kept
apart from the cache length. Appended segments continue from ``next_position``; a question continues
from the prefix. When older segments change (re-compression or eviction in the memory),
:meth:`EmbeddingContext.update_prefix` crops the cache back to the end of the last segment both versions
share and prefills the rest from the running position recorded there. Because the cache is causal, the
kept part is exactly what a fresh prefill would compute, so a question answered on the cached prefix
gives the same logits as one full forward pass over the same pieces (tested for every family, max abs
difference <= 1e-4).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from errors import TooLarge
from memory.segment import Segment
from models import probe
from models.adapter import Encoded, Prefix, Turn, Usage
from models.generation import Generation, TextPieces, TextStream, decode, fork
from models.prompts import DETAIL, RECALLED


@dataclass(frozen=True, slots=True)
class Visual:
    """Visual tokens with the per-token attributes their family needs (3-D positions, DeepStack features).

    Attributes:
        tokens: ``[T, D]`` embeddings.
        extras: each ``[T, ...]``, in the same order as ``tokens``.
    """

    tokens: torch.Tensor
    extras: Mapping[str, torch.Tensor]


#: A prompt is a list of pieces: text, a ``[T, D]`` tensor of visual embeddings, or a :class:`Visual`.
Piece = str | torch.Tensor | Visual


@dataclass(frozen=True, slots=True)
class Chunk:
    """One language-model forward's input, assembled from pieces.

    Attributes:
        embeds: ``[1, L, D]`` on the model's device and dtype.
        positions: ``[1, L]`` (1-D) or ``[3, 1, L]`` (M-RoPE).
        visual: ``[L]`` bool, True at visual tokens.
        extras: attributes of the visual tokens, concatenated in order, each ``[V, ...]`` (V visual tokens).
        end: the running position after the chunk (where the next piece starts).
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    visual: torch.Tensor
    extras: dict[str, torch.Tensor]
    end: int

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


@dataclass
class EmbeddingPrefix:
    """The cached prefix: KV cache over the head text and every segment in ``segment_ids``."""

    cache: DynamicCache
    length: int
    next_position: int
    segment_ids: tuple[int, ...]
    #: cache length after the head text and after each segment: ``ends[i]`` is where segment ``i`` stops
    ends: tuple[int, ...] = ()
    #: the running position after each segment (differs from ``ends`` for M-RoPE families)
    positions_after: tuple[int, ...] = ()
    head_length: int = 0
    head_position: int = 0
    start: float | None = None
    end: float | None = None
    wall_start: float | None = None  # wall-clock span of the segments, when they carry one
    wall_end: float | None = None
    frames: int = 0
    visual_tokens: int = 0
    meta: dict[str, object] = field(default_factory=dict)


def concat(chunks: Sequence[Chunk]) -> Chunk:
    """Chunks assembled one after another (each starting where the last ended) as one forward's input."""
    keys = set(chunks[0].extras)
    if any(set(c.extras) != keys for c in chunks):
        raise ValueError("visual attributes differ between segments of one prefill")
    return Chunk(
        embeds=torch.cat([c.embeds for c in chunks], dim=1),
        positions=torch.cat([c.positions for c in chunks], dim=-1),
        visual=torch.cat([c.visual for c in chunks]),
        extras={k: torch.cat([c.extras[k] for c in chunks], dim=0) for k in keys},
        end=chunks[-1].end,
    )


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
    model_id: str
    tokens_per_frame: int
    default_budget: int

    def bind(
        self,
        model: Any,
        tokenizer: Any,
        model_id: str,
        default_budget: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        end_of_turn: str,
    ) -> None:
        """What every family's constructor sets up alike: the model in eval mode on its device and dtype,
        the tokenizer, the normalisation, the position limit, and the tokens that end an answer."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.default_budget = default_budget
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self._mean, self._std = tuple(mean), tuple(std)
        self.max_positions = int(model.config.text_config.max_position_embeddings)
        stops = {tokenizer.convert_tokens_to_ids(end_of_turn), tokenizer.eos_token_id}
        self.stop_token_ids = frozenset(int(t) for t in stops if isinstance(t, int) and t >= 0)
        # Where live streams' time labels are read: the machine's zone until the server sets its own.
        self.timezone: tzinfo = datetime.now().astimezone().tzinfo or timezone.utc

    # --- the language model's parts ----------------------------------------------------------------
    def decoder(self) -> Any:
        """The language model's decoder (a transformers module with ``layers``, ``rotary_emb``, ``norm``)."""
        inner = self.model.model
        return getattr(inner, "text_model", None) or inner.language_model

    # --- reading the model without generating (models/probe.py) ------------------------------------
    def recall_keys(self, segment: Segment) -> torch.Tensor:
        """``[P, d]`` float16 keys summarising ``segment`` for recall (see :mod:`models.probe`)."""
        return probe.clip_keys(self, segment)

    def recall_queries(self, question: str) -> torch.Tensor:
        """``[P, T, d]`` queries of ``question`` to score recall keys with (see :mod:`models.probe`)."""
        return probe.question_queries(self, question)

    def yes_probability(self, prefix: Prefix, question: str) -> float:
        """P(yes) against P(no) as the answer to ``question`` on the cached prefix (see :mod:`models.probe`)."""
        return probe.yes_probability(self, own(prefix), question)

    # --- hooks a family supplies ---------------------------------------------------------------
    def encode(self, images: Sequence[np.ndarray]) -> Encoded:
        """``F`` RGB frames -> visual tokens (see :meth:`models.adapter.ModelAdapter.encode`)."""
        raise NotImplementedError

    def head_text(self) -> str:
        raise NotImplementedError

    def segment_pieces(self, segment: Segment) -> list[Piece]:
        raise NotImplementedError

    def suffix_text(self, turns: Sequence[Turn], question: str) -> str:
        raise NotImplementedError

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``[L]`` token ids -> ``[L, D]`` input embeddings."""
        return self.model.get_input_embeddings()(ids)

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        *,
        all_logits: bool,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the language model on ``[B, L, D]`` embeddings at ``positions``, extending ``cache``.

        Returns float logits, ``[B, L, V]`` if ``all_logits`` else ``[B, 1, V]`` (the last position).
        ``attention_mask`` ``[B, cached + L]`` (1 = attend) hides left padding when several answers decode as
        one batch (:mod:`models.generation`). The default suits every ``*ForConditionalGeneration`` whose
        forward passes ``inputs_embeds`` and ``position_ids`` through to its language model (no pixel values:
        the visual tokens are already in).
        """
        out = self.model(
            inputs_embeds=embeds,
            position_ids=positions,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
        )
        return out.logits.float()

    def positions(self, start: int, length: int) -> torch.Tensor:
        """Positions of ``length`` text tokens from ``start``: ``[1, L]`` here; M-RoPE families give
        ``[3, 1, L]``."""
        return torch.arange(start, start + length, device=self.device).unsqueeze(0)

    def visual_positions(self, visual: Visual, start: int) -> tuple[torch.Tensor, int]:
        """Positions of a visual piece placed at ``start``, and the running position after it.
        1-D families: one position per token."""
        n = int(visual.tokens.shape[0])
        return self.positions(start, n), start + n

    def run(self, chunk: Chunk, cache: DynamicCache, *, all_logits: bool) -> torch.Tensor:
        """Run the language model on ``chunk`` (see :meth:`forward`); families that inject per-token
        features into the decoder (DeepStack) override this."""
        return self.forward(chunk.embeds, chunk.positions, cache, all_logits=all_logits)

    # --- machinery -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def assemble(self, pieces: Sequence[Piece], start: int) -> Chunk:
        """Pieces -> embeddings, positions and visual attributes, starting at position ``start``."""
        embeds: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        visual: list[torch.Tensor] = []
        extras: dict[str, list[torch.Tensor]] = {}
        pos = start
        n_visual = 0
        for piece in pieces:
            if isinstance(piece, str):
                if not piece:
                    continue
                ids = self.tokenize(piece).to(self.device)
                embeds.append(self.embed_ids(ids))
                positions.append(self.positions(pos, len(ids)))
                visual.append(torch.zeros(len(ids), dtype=torch.bool))
                pos += len(ids)
                continue
            vis = piece if isinstance(piece, Visual) else Visual(piece, {})
            embeds.append(vis.tokens.to(self.device, self.dtype))
            where, pos = self.visual_positions(vis, pos)
            positions.append(where)
            visual.append(torch.ones(vis.tokens.shape[0], dtype=torch.bool))
            n_visual += int(vis.tokens.shape[0])
            for key, value in vis.extras.items():
                extras.setdefault(key, []).append(value)
        for key, parts in extras.items():
            if sum(int(p.shape[0]) for p in parts) != n_visual:
                raise ValueError(f"visual attribute {key!r} is missing on some visual pieces of the prompt")
        return Chunk(
            embeds=torch.cat(embeds, dim=0).unsqueeze(0),
            positions=torch.cat(positions, dim=-1),
            visual=torch.cat(visual).to(self.device),
            extras={k: torch.cat(v, dim=0).to(self.device) for k, v in extras.items()},
            end=pos,
        )

    def embed_pieces(self, pieces: Sequence[Piece]) -> torch.Tensor:
        """Pieces -> ``[L, D]`` embeddings on the model's device and dtype."""
        return self.assemble(pieces, 0).embeds[0]

    @torch.inference_mode()
    def _prefill(
        self, pieces: Sequence[Piece], cache: DynamicCache, start: int, *, all_logits: bool = False
    ) -> tuple[torch.Tensor, Chunk]:
        chunk = self.assemble(pieces, start)
        return self.run(chunk, cache, all_logits=all_logits), chunk

    def prefix_length(self, segments: Sequence[Segment]) -> int:
        """Tokens of the prefix over ``segments`` (head, labels, visual tokens), counted without the model."""
        pieces: list[Piece] = [self.head_text()]
        for seg in segments:
            pieces.extend(self.segment_pieces(seg))
        n = 0
        for piece in pieces:
            if isinstance(piece, str):
                n += len(self.tokenize(piece)) if piece else 0
            else:
                n += int((piece.tokens if isinstance(piece, Visual) else piece).shape[0])
        return n

    def build_prefix(self, segments: Sequence[Segment]) -> EmbeddingPrefix:
        cache = DynamicCache()
        pieces: list[Piece] = [self.head_text()]
        for seg in segments:
            pieces.extend(self.segment_pieces(seg))
        _, chunk = self._prefill([self.head_text()], cache, 0)
        prefix = EmbeddingPrefix(
            cache=cache,
            length=chunk.length,
            next_position=chunk.end,
            segment_ids=(),
            head_length=chunk.length,
            head_position=chunk.end,
        )
        return self.extend_prefix(prefix, segments)

    def extend_prefix(self, prefix: Prefix, segments: Sequence[Segment]) -> EmbeddingPrefix:
        prefix = own(prefix)
        if not segments:
            return prefix
        chunks = []
        pos = prefix.next_position
        for seg in segments:
            chunks.append(self.assemble(self.segment_pieces(seg), pos))
            pos = chunks[-1].end
        try:
            with torch.inference_mode():
                self.run(concat(chunks), prefix.cache, all_logits=False)
        except BaseException:
            restore(prefix)  # leave the prefix exactly as it was, so it stays usable
            raise
        for seg, chunk in zip(segments, chunks, strict=True):
            prefix.length += chunk.length
            prefix.next_position = chunk.end
            prefix.ends = (*prefix.ends, prefix.length)
            prefix.positions_after = (*prefix.positions_after, prefix.next_position)
            prefix.segment_ids = (*prefix.segment_ids, seg.id)
            prefix.start = seg.start if prefix.start is None else prefix.start
            prefix.end = seg.end
            prefix.wall_start = seg.wall_start if prefix.wall_start is None else prefix.wall_start
            prefix.wall_end = seg.wall_end
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
        if len(prefix.ends) != len(prefix.segment_ids) or len(prefix.positions_after) != len(prefix.ends):
            # Built by an override that does not record segment boundaries: nothing to crop back to.
            return self.build_prefix(segments)
        have = prefix.segment_ids
        keep = 0
        while keep < min(len(have), len(segments)) and have[keep] == segments[keep].id:
            keep += 1
        if keep < len(have):
            cut = prefix.ends[keep - 1] if keep else prefix.head_length
            prefix.length = cut
            prefix.next_position = prefix.positions_after[keep - 1] if keep else prefix.head_position
            restore(prefix)  # every layer back to ``cut``
            prefix.ends, prefix.segment_ids = prefix.ends[:keep], have[:keep]
            prefix.positions_after = prefix.positions_after[:keep]
            kept = segments[:keep]
            prefix.start = kept[0].start if kept else None
            prefix.end = kept[-1].end if kept else None
            prefix.wall_start = kept[0].wall_start if kept else None
            prefix.wall_end = kept[-1].wall_end if kept else None
            prefix.frames = sum(s.frames for s in kept)
            prefix.visual_tokens = sum(s.num_tokens for s in kept)
        return self.extend_prefix(prefix, segments[keep:])

    @torch.inference_mode()
    def question_logits(
        self, prefix: EmbeddingPrefix, turns: Sequence[Turn], question: str, extra: Sequence[Piece] = ()
    ) -> torch.Tensor:
        """``[L, V]`` logits of the question suffix computed on the cached prefix after ``extra`` pieces
        (the cache is restored)."""
        n_extra = self.assemble(extra, prefix.next_position).length if extra else 0
        try:
            logits, _ = self._prefill(
                [*extra, self.suffix_text(turns, question)], prefix.cache, prefix.next_position, all_logits=True
            )
        finally:
            restore(prefix)
        return logits[0, n_extra:]

    @torch.inference_mode()
    def full_logits(
        self, segments: Sequence[Segment], turns: Sequence[Turn], question: str, extra: Sequence[Piece] = ()
    ) -> torch.Tensor:
        """``[L, V]`` logits of the question suffix from one forward pass over everything (no reuse)."""
        pieces: list[Piece] = [self.head_text()]
        for seg in segments:
            pieces.extend(self.segment_pieces(seg))
        pieces.extend(extra)
        n_prefix = self.assemble(pieces, 0).length
        pieces.append(self.suffix_text(turns, question))
        logits, _ = self._prefill(pieces, DynamicCache(), 0, all_logits=True)
        return logits[0, n_prefix:]

    def context_pieces(self, recalled: Sequence[Segment], detail: np.ndarray | None) -> list[Piece]:
        """What a question adds between the cached prefix and itself: archived clips recalled for it (with
        their time labels) and the newest frame in detail. Empty when there is neither."""
        pieces: list[Piece] = []
        if recalled:
            pieces.append(RECALLED)
            for seg in recalled:
                pieces.extend(self.segment_pieces(seg))
        if detail is not None:
            pieces.append(DETAIL)
            pieces.extend(self.detail_pieces(detail))
        return pieces

    def detail_pieces(self, image: np.ndarray) -> list[Piece]:
        """The newest frame ``[H, W, 3]`` in detail. This default encodes it at the model's own frame size
        (what memory merged away); families with image splitting or dynamic resolution do better."""
        encoded = self.encode([image])
        return [Visual(encoded.tokens[0], {k: v[0] for k, v in encoded.extras.items()}), "\n"]

    @torch.inference_mode()
    def generate_ids(
        self,
        prefix: EmbeddingPrefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
        *,
        extra: Sequence[Piece] = (),
        usage: Usage | None = None,
    ) -> Iterator[int]:
        """Greedy decoding on the cached prefix, after ``extra`` pieces (see :meth:`context_pieces`); yields
        token ids; restores the cache when done. ``usage.prompt`` is set to the tokens the answer is
        conditioned on once they are read.

        Earlier turns are dropped, oldest first, when the prefix, the extra pieces, the question and
        ``max_new_tokens`` would not fit in the model's positions; :class:`TooLarge` if even the question
        alone does not fit.
        """
        gen = self.begin(prefix, turns, question, max_new_tokens, extra=extra)
        if usage is not None:
            usage.prompt = gen.usage.prompt
        while not gen.done:
            if cancel.is_set():
                return
            assert gen.token is not None
            yield gen.token
            decode(self, [gen])

    def begin(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        *,
        extra: Sequence[Piece] = (),
    ) -> Generation:
        """An answer under way on a fork of the prefix's cache (:mod:`models.generation`): ``extra`` pieces
        and the question prefilled, the first token chosen. The prefix is never touched, so it may be
        brought up to new frames while the answer goes on. :class:`TooLarge` if the question does not fit
        (earlier turns are dropped first)."""
        prefix = own(prefix)
        after = self.assemble(extra, prefix.next_position).end if extra else prefix.next_position
        suffix = self.fit_suffix(prefix, turns, question, max_new_tokens, start=after)
        cache = fork(prefix.cache)
        logits, chunk = self._prefill([*extra, suffix], cache, prefix.next_position)
        gen = Generation(cache, chunk.end, max_new_tokens, self.stop_token_ids, TextStream(self.tokenizer))
        gen.usage.prompt = prefix.length + chunk.length
        gen.choose(logits[0, -1])
        return gen

    def decode(self, gens: Sequence[Generation]) -> None:
        """Move every unfinished answer of ``gens`` one token on, batched in one forward pass."""
        decode(self, gens)

    def fit_suffix(
        self,
        prefix: EmbeddingPrefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        *,
        start: int | None = None,
    ) -> str:
        """The question suffix with as many recent turns as fit in ``max_positions`` when it starts at
        position ``start`` (default: right after the prefix)."""
        turns = list(turns)
        base = prefix.next_position if start is None else start
        while True:
            text = self.suffix_text(turns, question)
            if self.max_positions is None:
                return text
            need = base + len(self.tokenize(text)) + max_new_tokens
            if need <= self.max_positions:
                return text
            if not turns:
                raise TooLarge(
                    f"the question and {max_new_tokens} new tokens do not fit after {base} tokens "
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
        *,
        recalled: Sequence[Segment] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        """Greedy answer as text pieces, decoded incrementally (never splitting a UTF-8 character); the
        pieces count the answer's tokens (:class:`~models.adapter.CountsUsage`)."""
        extra = self.context_pieces(recalled, detail)
        usage = Usage()
        ids = self.generate_ids(own(prefix), turns, question, max_new_tokens, cancel, extra=extra, usage=usage)
        return TextPieces(self.tokenizer, ids, usage)

    def text_pieces(self, tokens: Iterable[int]) -> TextPieces:
        """Token ids -> text pieces as soon as they decode to whole characters (counting the tokens)."""
        return TextPieces(self.tokenizer, tokens)
