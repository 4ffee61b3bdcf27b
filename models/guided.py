"""Question-guided video-level compression inside the language model (VideoChat-Flash's HiCo, prefill only).

Optional and off by default: it needs the question, so the visual part of the prompt cannot come from the
cached prefix; every answer pays a fresh prefill over the whole memory. In exchange, deeper layers work on
fewer visual tokens, chosen either uniformly or by how much the question attends to them.

During the prompt pass, just before each layer in ``layers``, the visual tokens still present are cut to
``keep[i]`` of the visual tokens the prompt started with:

- ``uniform`` keeps evenly spaced visual tokens;
- ``attention`` keeps those that the last prompt token attends to most, scored with that layer's own query
  and key projections and rotary positions, averaged over heads (kept in their original order).

Positions are renumbered contiguously after each cut, so every layer sees positions ``0 .. n-1`` over what
it holds; its KV cache holds exactly those tokens, and generated tokens continue each layer's numbering.
With every ratio at 1 this is the ordinary forward pass (tested: logits equal the cached path).

The decoder layers are transformers' own modules; this file only runs them in order, as the model's
forward does, so that the sequence can shrink between two of them (1-D RoPE decoders: Llama, Qwen2).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache

from memory.segment import Segment
from models.adapter import SupportsGuided, Turn
from models.context import Piece


@dataclass(frozen=True, slots=True)
class GuidedSettings:
    """Where and how much to cut. ``keep`` ratios are of the prompt's original visual tokens.

    VideoChat-Flash's model card suggests layers (4, 18) with keep ratios (0.75, 0.25) (16 -> 12 -> 4
    tokens per frame) on a 28-layer decoder.
    """

    mode: Literal["uniform", "attention"] = "attention"
    layers: tuple[int, ...] = (4, 18)
    keep: tuple[float, ...] = (0.75, 0.25)

    @classmethod
    def for_depth(cls, mode: Literal["uniform", "attention"], n_layers: int) -> GuidedSettings:
        """The model card's setting scaled to a decoder of ``n_layers``: cuts at 4/28 and 18/28 of the depth."""
        first = min(n_layers - 1, round(n_layers * 4 / 28))
        second = min(n_layers - 1, max(first + 1, round(n_layers * 18 / 28)))
        if second == first:
            return cls(mode, (first,), (0.25,))
        return cls(mode, (first, second), (0.75, 0.25))

    def __post_init__(self) -> None:
        if self.mode not in ("uniform", "attention"):
            raise ValueError(f"mode must be uniform or attention, got {self.mode!r}")
        if len(self.layers) != len(self.keep) or not self.layers:
            raise ValueError("give one keep ratio per layer, at least one")
        if list(self.layers) != sorted(set(self.layers)) or self.layers[0] < 0:
            raise ValueError(f"layers must be increasing and >= 0, got {self.layers}")
        if any(not 0.0 < k <= 1.0 for k in self.keep) or list(self.keep) != sorted(self.keep, reverse=True):
            raise ValueError(f"keep ratios must be in (0, 1] and not increase, got {self.keep}")


@dataclass
class GuidedState:
    """The KV cache of one guided answer: layer ``i`` holds ``lengths[i]`` tokens."""

    cache: DynamicCache
    lengths: list[int]
    visual_kept: list[int]  # visual tokens each layer saw
    logits: torch.Tensor  # ``[V]`` logits for the first answer token


class GuidedAnswerer:
    """Answers with question-guided dropping of visual tokens during the prompt pass."""

    def __init__(self, family: SupportsGuided, settings: GuidedSettings) -> None:
        self.family = family
        self.settings = settings
        self.decoder, self.lm_head = family.language_model()
        n_layers = len(self.decoder.layers)
        if self.settings.layers[-1] >= n_layers:
            raise ValueError(f"cut layer {self.settings.layers[-1]} is beyond the decoder's {n_layers} layers")

    def _prompt(
        self, segments: Sequence[Segment], turns: Sequence[Turn], question: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeds [L, D]`` and ``visual [L]`` bool (True where a token is a visual token)."""
        f = self.family
        parts: list[torch.Tensor] = []
        flags: list[torch.Tensor] = []
        pieces: list[Piece] = [f.head_text()]
        for seg in segments:
            pieces.extend(f.segment_pieces(seg))
        pieces.append(f.suffix_text(turns, question))
        for piece in pieces:
            if isinstance(piece, str) and not piece:
                continue
            e = f.embed_pieces([piece])
            parts.append(e)
            flags.append(torch.full((e.shape[0],), not isinstance(piece, str), dtype=torch.bool, device=e.device))
        return torch.cat(parts), torch.cat(flags)

    def _rope(self, hidden: torch.Tensor, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + n, device=hidden.device).unsqueeze(0)
        return self.decoder.rotary_emb(hidden, position_ids=pos)

    def _scores(self, layer: Any, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``[L]`` attention of the last token over every token at ``layer`` (softmax, mean over heads)."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)  # [1, L, D]
        d = attn.head_dim
        q = attn.q_proj(x[:, -1:]).view(1, 1, -1, d).transpose(1, 2)  # [1, H, 1, d]
        k = attn.k_proj(x).view(1, x.shape[1], -1, d).transpose(1, 2)  # [1, Hkv, L, d]
        cos, sin = rope
        q = _rotate(q, cos[:, -1:], sin[:, -1:])
        k = _rotate(k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query heads share keys
        w = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scaling, dim=-1)  # [1, H, 1, L]
        return w[0, :, 0].mean(0)

    def _select(self, visual: torch.Tensor, keep_n: int, scores: torch.Tensor | None) -> torch.Tensor:
        """Indices (ascending) of every text token and ``keep_n`` of the visual ones."""
        vis = visual.nonzero().squeeze(1)
        if keep_n >= vis.numel():
            return torch.arange(visual.numel(), device=visual.device)
        if scores is None:
            pick = torch.linspace(0, vis.numel() - 1, keep_n, device=vis.device).round().long()
        else:
            pick = torch.sort(scores[vis], descending=True, stable=True).indices[:keep_n]
        kept = torch.zeros_like(visual)
        kept[vis[pick]] = True
        return (~visual | kept).nonzero().squeeze(1)

    @torch.inference_mode()
    def prefill(self, segments: Sequence[Segment], turns: Sequence[Turn], question: str) -> GuidedState:
        """The guided prompt pass over ``segments`` then the question: a fresh cache, cut as configured."""
        embeds, visual = self._prompt(segments, turns, question)
        n_visual = int(visual.sum())
        cuts = dict(zip(self.settings.layers, self.settings.keep, strict=True))
        hidden = embeds.unsqueeze(0)
        rope = self._rope(hidden, 0, hidden.shape[1])
        cache = DynamicCache()
        lengths, kept = [], []
        for i, layer in enumerate(self.decoder.layers):
            if i in cuts:
                keep_n = max(1, math.ceil(cuts[i] * n_visual)) if n_visual else 0
                scores = self._scores(layer, hidden, rope) if self.settings.mode == "attention" else None
                idx = self._select(visual, keep_n, scores)
                hidden, visual = hidden[:, idx], visual[idx]
                rope = self._rope(hidden, 0, hidden.shape[1])  # renumbered contiguously
            hidden = layer(hidden, attention_mask=self._mask(hidden), position_embeddings=rope, cache=cache)
            lengths.append(int(hidden.shape[1]))
            kept.append(int(visual.sum()))
        logits = self.lm_head(self.decoder.norm(hidden[:, -1:]))[0, -1].float()
        return GuidedState(cache, lengths, kept, logits)

    def _mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Causal mask for a fresh prompt: sdpa and flash apply causality themselves when given none."""
        if self.decoder.config._attn_implementation in ("sdpa", "flash_attention_2"):
            return None
        n = hidden.shape[1]
        upper = torch.ones(n, n, dtype=torch.bool, device=hidden.device).triu(1)
        return torch.zeros(1, 1, n, n, dtype=hidden.dtype, device=hidden.device).masked_fill(
            upper, torch.finfo(hidden.dtype).min
        )

    @torch.inference_mode()
    def generate_ids(
        self,
        segments: Sequence[Segment],
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
    ) -> Iterator[int]:
        """Greedy decoding after a guided prefill; each layer numbers new tokens after what it holds."""
        state = self.prefill(segments, turns, question)
        logits = state.logits
        for _ in range(max_new_tokens):
            if cancel.is_set():
                return
            token = int(logits.argmax())
            if token in self.family.stop_token_ids:
                return
            yield token
            hidden = self.family.embed_ids(torch.tensor([token], device=self.family.device)).unsqueeze(0)
            for i, layer in enumerate(self.decoder.layers):
                rope = self._rope(hidden, state.lengths[i], 1)
                hidden = layer(hidden, attention_mask=None, position_embeddings=rope, cache=state.cache)
                state.lengths[i] += 1
            logits = self.lm_head(self.decoder.norm(hidden))[0, -1].float()

    def generate(
        self,
        segments: Sequence[Segment],
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
    ) -> Iterator[str]:
        """:meth:`generate_ids` as text pieces."""
        return self.family.text_pieces(self.generate_ids(segments, turns, question, max_new_tokens, cancel))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [B, H, L, d]`` with ``cos``/``sin`` ``[B, L, d]`` (half-split convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
