"""Reading the language model without generating: what recall and watches ask of it.

- **Recall keys** (ReKV-style retrieval by the model itself): a clip is summarised by the mean of the
  attention keys its visual tokens produce in a few middle decoder layers; a question by the attention
  queries of its tokens in the same layers. A clip's relevance is how well the question's queries match
  its keys (cosine, best question token, averaged over layers and key heads). Keys and queries are taken
  before the rotary embedding, so they compare content, not positions.
- **Yes/no probability** (watches): the probability of "yes" against "no" as the next token after a
  question on the cached prefix, in one short prefill, with nothing generated; the cache is restored.

Every function runs on the inference thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from memory.segment import Segment
from models.adapter import Turn

if TYPE_CHECKING:
    from models.context import EmbeddingContext, EmbeddingPrefix

YES = ("yes", "Yes", " yes", " Yes", "YES")
NO = ("no", "No", " no", " No", "NO")


def probe_layers(n_layers: int) -> tuple[int, ...]:
    """The decoder layers recall reads: the middle and three quarters of the way up (distinct)."""
    return tuple(sorted({n_layers // 2, (3 * n_layers) // 4}))


@contextmanager
def _capture(modules: Sequence[torch.nn.Module]) -> Iterator[list[torch.Tensor]]:
    """The outputs of ``modules`` during the block, in order."""
    out: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        out.append(output.detach())

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def _heads(decoder: Any) -> tuple[int, int, int]:
    cfg = decoder.config
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return heads, kv, head_dim


@torch.inference_mode()
def clip_keys(ctx: EmbeddingContext, segment: Segment) -> torch.Tensor:
    """``[K * Hkv, d]`` float16: the mean pre-rotary key of the segment's visual tokens per probed layer and
    key head, the segment laid out as in the prefix (its label, its tokens) on its own."""
    decoder = ctx.decoder()
    layers = probe_layers(len(decoder.layers))
    _, kv, d = _heads(decoder)
    chunk = ctx.assemble(ctx.segment_pieces(segment), 0)
    with _capture([decoder.layers[i].self_attn.k_proj for i in layers]) as keys:
        ctx.run(chunk, DynamicCache(), all_logits=False)
    visual = chunk.visual
    out = [k[0][visual].float().reshape(-1, kv, d).mean(0) for k in keys]  # each [Hkv, d]
    return torch.cat(out).to(torch.float16).cpu()


@torch.inference_mode()
def question_queries(ctx: EmbeddingContext, question: str) -> torch.Tensor:
    """``[K * Hkv, T, d]`` float32: the pre-rotary queries of the question's tokens per probed layer and key
    head (query heads sharing a key head averaged)."""
    decoder = ctx.decoder()
    layers = probe_layers(len(decoder.layers))
    heads, kv, d = _heads(decoder)
    chunk = ctx.assemble([question], 0)
    with _capture([decoder.layers[i].self_attn.q_proj for i in layers]) as queries:
        ctx.run(chunk, DynamicCache(), all_logits=False)
    out = []
    for q in queries:
        t = q.shape[1]
        grouped = q[0].float().reshape(t, kv, heads // kv, d).mean(2)  # [T, Hkv, d]
        out.append(grouped.transpose(0, 1))  # [Hkv, T, d]
    return torch.cat(out).cpu()


def relevance(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """How well a question (``[K*Hkv, T, d]`` queries) matches a clip (``[K*Hkv, d]`` keys): per layer and
    key head the best cosine over the question's tokens, averaged. In [-1, 1]."""
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    cos = (q * k[:, None, :]).sum(-1)  # [K*Hkv, T]
    return float(cos.max(dim=1).values.mean())


def _token_ids(ctx: EmbeddingContext, words: Sequence[str]) -> list[int]:
    """The first token of each spelling (the model answers "Yes" or " yes" depending on its format)."""
    ids = {int(ctx.tokenize(w)[0]) for w in words if len(ctx.tokenize(w))}
    return sorted(ids)


@torch.inference_mode()
def yes_probability(ctx: EmbeddingContext, prefix: EmbeddingPrefix, question: str) -> float:
    """P(yes) / (P(yes) + P(no)) for the next token after ``question`` on the cached ``prefix``, over the
    spellings in :data:`YES` and :data:`NO`. One prefill of the question; the cache is left as it was."""
    from models.context import restore

    turns: list[Turn] = []
    suffix = ctx.fit_suffix(prefix, turns, question, 1)
    try:
        logits, _ = ctx._prefill([suffix], prefix.cache, prefix.next_position)
    finally:
        restore(prefix)
    probs = torch.softmax(logits[0, -1].float(), dim=-1)
    yes = float(probs[_token_ids(ctx, YES)].sum())
    no = float(probs[_token_ids(ctx, NO)].sum())
    total = yes + no
    return 0.5 if total <= 0 or math.isnan(total) else yes / total
