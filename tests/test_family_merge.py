"""HiCo clip merges keep each family's per-token attributes aligned with its tokens.

The merge is ``memory.merge.merge_tokens`` (issue 3). Until that module is on this branch, a small local
bipartite merge with the same signature stands in; the checks do not depend on which assignment the
merge picks: a one-hot "member" probe rides along as one more attribute and reveals, for every merged
token, which originals it absorbed and with what weight. Tokens, times, 3-D positions and DeepStack
features must all be those weighted means; an attribute merged with any other assignment fails.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from memory import Segment
from models.mrope import segment_offsets
from tests.families import FAMILIES, adapter, frames, segments

CLIP = 4  # frames per clip, as HiCo groups them


def _local_merge(
    tokens: torch.Tensor,
    target: int,
    *,
    sizes: torch.Tensor | None = None,
    attrs: dict[str, torch.Tensor] | None = None,
) -> Any:
    """Repeated bipartite soft matching (even/odd sets, cosine, size-weighted means, integers rounded back)."""
    from types import SimpleNamespace

    sizes = torch.ones(len(tokens), dtype=torch.int64) if sizes is None else sizes
    attrs = dict(attrs or {})
    while len(tokens) > target:
        t = len(tokens)
        r = min(t // 2, t - target)
        a, b = torch.arange(0, t, 2), torch.arange(1, t, 2)
        sim = (
            torch.nn.functional.normalize(tokens[a].float(), dim=-1)
            @ torch.nn.functional.normalize(tokens[b].float(), dim=-1).T
        )
        best, partner = sim.max(dim=-1)
        order = torch.sort(-best, stable=True).indices
        src, keep = order[:r], torch.sort(order[r:]).values
        dst = partner[src]
        w = sizes.double()
        new_w = w[b].index_add(0, dst, w[a][src])
        perm = torch.sort(torch.cat([a[keep], b])).indices

        def fold(x: torch.Tensor, a=a, b=b, src=src, dst=dst, keep=keep, w=w, new_w=new_w, perm=perm) -> torch.Tensor:
            xf, shape = x.double(), (-1,) + (1,) * (x.ndim - 1)
            acc = (xf[b] * w[b].view(shape)).index_add(0, dst, xf[a][src] * w[a][src].view(shape))
            out = torch.cat([xf[a][keep], acc / new_w.view(shape)])[perm]
            return out.to(x.dtype) if x.dtype.is_floating_point else out.round().to(x.dtype)

        tokens, attrs = fold(tokens), {k: fold(v) for k, v in attrs.items()}
        sizes = torch.cat([sizes[a][keep], sizes[b].index_add(0, dst, sizes[a][src])])[perm]
    return SimpleNamespace(tokens=tokens, sizes=sizes, attrs=attrs)


def merge_function() -> Callable[..., Any]:
    if importlib.util.find_spec("memory.merge") is not None:
        merge: Any = importlib.import_module("memory.merge")
        return merge.merge_tokens
    return _local_merge


def merge_clip(segs: list[Segment], target: int) -> tuple[Segment, torch.Tensor, dict[str, torch.Tensor]]:
    """Merge a clip of one-frame segments into one segment of ``target`` tokens.

    Returns the segment, the ``[T', T]`` membership weights, and the unmerged attributes (``[T, ...]``)."""
    tokens = torch.cat([s.tokens for s in segs])
    originals = {"times": torch.cat([s.times for s in segs])}
    for key in segs[0].extras:
        originals[key] = torch.cat([s.extras[key] for s in segs])
    member = torch.eye(len(tokens), dtype=torch.float64)
    merged = merge_function()(
        tokens, target, sizes=torch.cat([s.sizes for s in segs]), attrs={**originals, "member": member}
    )
    extras = {k: v for k, v in merged.attrs.items() if k not in ("times", "member")}
    seg = Segment(
        id=100,
        start=segs[0].start,
        end=segs[-1].end,
        frames=len(segs),
        tokens=merged.tokens,
        times=merged.attrs["times"],
        sizes=merged.sizes,
        extras=extras,
        tier=1,
    )
    return seg, merged.attrs["member"], {"tokens": tokens, **originals}


@pytest.mark.parametrize("name", FAMILIES)
def test_clip_merge_keeps_attributes_aligned(name: str) -> None:
    ad = adapter(name)
    segs = segments(ad, frames(CLIP, seed=4))
    n = ad.tokens_per_frame
    seg, weights, orig = merge_clip(segs, n)
    assert seg.num_tokens == n
    assert weights.shape == (n, CLIP * n)
    assert torch.allclose(weights.sum(1), torch.ones(n, dtype=torch.float64))
    assert torch.equal((weights > 0).sum(1), seg.sizes)  # every original stands for one token here
    assert torch.allclose(seg.tokens.double(), weights @ orig["tokens"].double(), atol=1e-5)
    assert torch.allclose(seg.times, weights @ orig["times"])
    assert set(seg.extras) == set(segs[0].extras)
    if "deepstack" in seg.extras:
        expect = torch.einsum("mt,tkd->mkd", weights, orig["deepstack"].double())
        assert torch.allclose(seg.extras["deepstack"].double(), expect, atol=1e-5)
    if "mrope" in seg.extras:
        assert seg.extras["mrope"].dtype == torch.int64
        # Integers are rounded back after every merge round, so allow half a position per round.
        rounds = math.ceil(math.log2(CLIP))
        exact = weights @ orig["mrope"].double()
        assert float((seg.extras["mrope"].double() - exact).abs().max()) <= 0.5 * rounds
        # ...and that tolerance still catches positions merged with another assignment.
        shuffled = orig["mrope"][torch.randperm(len(orig["mrope"]), generator=torch.Generator().manual_seed(0))]
        assert float((weights @ shuffled.double() - exact).abs().max()) > 0.5 * rounds


@pytest.mark.parametrize("name", FAMILIES)
def test_merged_segments_through_the_cached_prefix_equal_a_recompute(name: str) -> None:
    ad = adapter(name)
    first = segments(ad, frames(CLIP, seed=5))
    clip, _, _ = merge_clip(first, ad.tokens_per_frame // 2)
    fresh = segments(ad, frames(1, seed=6))[0]
    fresh = Segment(101, 5.0, 5.0, 1, fresh.tokens, torch.full_like(fresh.times, 5.0), fresh.sizes, fresh.extras)
    prefix = ad.build_prefix([clip])
    ad.extend_prefix(prefix, [fresh])
    ours = ad.question_logits(prefix, [], "What happened?")
    assert float((ours - ad.full_logits([clip, fresh], [], "What happened?")).abs().max()) <= 1e-4
    if "mrope" in clip.extras:
        # The merged clip sits on its own grid: frame index from time on the t axis, merged (row, col).
        pieces = [ad.head_text(), *ad.segment_pieces(clip)]
        chunk = ad.assemble(pieces, 0)
        visual = chunk.visual.nonzero().flatten()
        start = int(visual[0])
        assert torch.equal(chunk.positions[:, 0, visual].T - start, segment_offsets(clip))
        assert int(segment_offsets(clip)[:, 0].max()) >= 1  # tokens from later frames keep later times
