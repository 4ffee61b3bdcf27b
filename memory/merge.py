"""Token merging by repeated bipartite soft matching (ToMe), as HiCo uses it at clip level.

Pure functions over tensors: no weights, no randomness, no device choices. Every per-token attribute
(timestamps, sizes, positions, whatever a model family carries) goes through the same assignment as the
tokens, so a merged token's attributes are the size-weighted means of those of the tokens it absorbed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Merged:
    """The result of a merge.

    Attributes:
        tokens: ``[T', D]`` merged tokens, same dtype as the input.
        sizes: ``[T']`` int64 how many original tokens each stands for (they add up to the input's total).
        attrs: each ``[T', ...]``, the size-weighted mean of the input attribute over the same groups
            (integer attributes are rounded back to their dtype).
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    attrs: dict[str, torch.Tensor]


def similarity(a: torch.Tensor, b: torch.Tensor, heads: int = 1) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` ``[Ta, D]`` with every row of ``b`` ``[Tb, D]``: ``[Ta, Tb]``.

    With ``heads > 1`` the features are split into ``heads`` equal chunks (as attention heads see them),
    the cosine is taken per chunk and averaged, so one loud channel group cannot dominate the match.
    """
    d = a.shape[-1]
    if heads < 1 or d % heads:
        raise ValueError(f"feature size {d} does not split into {heads} heads")
    a = a.float().reshape(a.shape[0], heads, d // heads).transpose(0, 1)  # [H, Ta, d/H]
    b = b.float().reshape(b.shape[0], heads, d // heads).transpose(0, 1)
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    return (a @ b.transpose(1, 2)).mean(0)


def merge_round(
    tokens: torch.Tensor, sizes: torch.Tensor, attrs: dict[str, torch.Tensor], r: int, heads: int = 1
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One round of bipartite soft matching: merge the ``r`` best pairs, ``T`` -> ``T - r`` tokens.

    Tokens at even indices form set A, odd indices set B (alternating, so neighbours in time and space
    land in different sets). Each A token picks its most similar B token; the ``r`` A tokens with the
    highest scores are folded into their B partners by size-weighted means. Survivors keep their
    original relative order, so tokens stay roughly in time order within a segment. Ties are broken by
    index, which makes the result deterministic.

    Args:
        tokens: ``[T, D]``; sizes: ``[T]`` int64 (> 0); attrs: each ``[T, ...]``.
        r: pairs to merge, ``0 <= r <= T // 2``.

    Returns:
        ``tokens [T - r, D]``, ``sizes [T - r]``, attrs each ``[T - r, ...]``.
    """
    t = int(tokens.shape[0])
    if not 0 <= r <= t // 2:
        raise ValueError(f"cannot merge {r} pairs out of {t} tokens in one round")
    if r == 0:
        return tokens, sizes, attrs
    a_idx = torch.arange(0, t, 2, device=tokens.device)
    b_idx = torch.arange(1, t, 2, device=tokens.device)
    scores = similarity(tokens[a_idx], tokens[b_idx], heads)  # [Ta, Tb]
    best, partner = scores.max(dim=-1)  # max() returns the first (lowest-index) maximum: deterministic
    order = torch.sort(-best, stable=True).indices  # best-matching A tokens first, ties by index
    src = order[:r]  # A positions that merge away
    keep_a = torch.sort(order[r:]).values
    dst = partner[src]  # B positions they merge into

    # Survivors go back in original index order: kept A tokens, then every B token, permuted.
    perm = torch.sort(torch.cat([a_idx[keep_a], b_idx])).indices
    w = sizes.to(torch.float64)
    w_a, w_b = w[a_idx], w[b_idx]
    new_w_b = w_b.index_add(0, dst, w_a[src])

    def fold(x: torch.Tensor) -> torch.Tensor:
        # Size-weighted mean over each group, computed in float64 so repeated rounds do not drift.
        xf = x.to(torch.float64)
        shape = (-1,) + (1,) * (x.ndim - 1)
        xa, xb = xf[a_idx], xf[b_idx]
        acc = (xb * w_b.view(shape)).index_add(0, dst, xa[src] * w_a[src].view(shape))
        merged_b = acc / new_w_b.view(shape)
        out = torch.cat([xa[keep_a], merged_b])[perm]
        if x.dtype.is_floating_point:
            return out.to(x.dtype)
        return out.round().to(x.dtype)

    merged_sizes = sizes[b_idx].index_add(0, dst, sizes[a_idx][src])
    new_sizes = torch.cat([sizes[a_idx][keep_a], merged_sizes])[perm]
    return fold(tokens), new_sizes, {k: fold(v) for k, v in attrs.items()}


def merge_tokens(
    tokens: torch.Tensor,
    target: int,
    *,
    sizes: torch.Tensor | None = None,
    attrs: dict[str, torch.Tensor] | None = None,
    heads: int = 1,
) -> Merged:
    """Merge ``tokens`` ``[T, D]`` down to exactly ``min(T, target)`` tokens.

    Rounds of :func:`merge_round` with ``r = min(T // 2, T - target)``, so no round removes more than
    half (448 px HiCo: 3136 -> 1568 -> 784 -> 392 -> 196 -> 98 -> 64).

    Args:
        tokens: ``[T, D]``.
        target: tokens wanted, ``>= 1``.
        sizes: ``[T]`` int64, how many originals each token already stands for (default: ones).
        attrs: per-token attributes, each ``[T, ...]``, merged with the same assignment.
        heads: similarity heads (see :func:`similarity`).
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [T, D], got {tuple(tokens.shape)}")
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    t = int(tokens.shape[0])
    if sizes is None:
        sizes = torch.ones(t, dtype=torch.int64, device=tokens.device)
    attrs = dict(attrs or {})
    if sizes.shape != (t,):
        raise ValueError(f"sizes must be [{t}], got {tuple(sizes.shape)}")
    for key, value in attrs.items():
        if value.shape[0] != t:
            raise ValueError(f"attribute {key!r} has {value.shape[0]} rows for {t} tokens")
    while t > target:
        r = min(t // 2, t - target)
        tokens, sizes, attrs = merge_round(tokens, sizes, attrs, r, heads)
        t -= r
    return Merged(tokens, sizes, attrs)
